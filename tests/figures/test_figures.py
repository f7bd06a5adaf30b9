"""Run figures, sweep report, HTML report and their commands."""

from __future__ import annotations

import csv
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import cli
from inat.figures import plots
from inat.fsutil import FILE_MODE

CLASSES = ["Amphibia", "Animalia", "Arachnida", "Aves", "Fungi",
           "Insecta", "Mammalia", "Mollusca", "Plantae", "Reptilia"]
RUN_PNGS = ["predictions", "filters", "feature_maps", "guided_backprop", "confusion_matrix"]


def assert_sensible_png(path: Path, min_width: int = 800, min_kb: float = 15) -> None:
    assert path.is_file(), path
    with Image.open(path) as im:
        assert im.format == "PNG"
        width, height = im.size
    assert width >= min_width and height >= 300, (path.name, im.size)
    assert path.stat().st_size > min_kb * 1024, (path.name, path.stat().st_size)


# ---- pure plotting functions ----------------------------------------------------------------------


@pytest.mark.parametrize("n, shape", [(64, (8, 8)), (32, (4, 8)), (16, (4, 4)), (8, (2, 4)), (12, (3, 4)),
                                      (128, (8, 16)), (7, (2, 4)), (1, (1, 1))])
def test_grid_shape(n, shape):
    assert plots.grid_shape(n) == shape
    rows, cols = plots.grid_shape(n)
    assert rows * cols >= n


def _photos(n, size=48, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def test_prediction_grid_panels_and_marked_mistakes():
    true = np.repeat(np.arange(10), 3)
    pred = true.copy()
    pred[[1, 7, 20]] = [4, 0, 9]
    fig = plots.prediction_grid(_photos(30), true, pred, np.full(30, 0.5), CLASSES)
    assert plots.image_panels(fig) == 30
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert sum("✗" in t for t in titles) == 3
    assert all(t.startswith("true: ") and "pred: " in t and "(50%)" in t for t in titles)
    wrong = [ax for ax in fig.axes if ax.images and "✗" in ax.get_title()]
    red = (0xD1 / 255, 0x24 / 255, 0x2F / 255)
    assert all(ax.spines["top"].get_edgecolor()[:3] == pytest.approx(red) for ax in wrong)


def test_prediction_grid_leaves_a_blank_for_a_short_class():
    true = np.array([0, 0, 0, 1])  # class 1 has a single test image
    fig = plots.prediction_grid(_photos(4), true, true, np.ones(4), CLASSES[:2])
    assert plots.image_panels(fig) == 4 and len(fig.axes) == 6


@pytest.mark.parametrize("n", [64, 32, 16])
def test_filter_and_feature_map_grids_have_one_panel_per_filter(n):
    kernel = np.random.default_rng(0).normal(size=(5, 5, 3, n))
    fig = plots.filter_grid(kernel, "conv1")
    assert plots.image_panels(fig) == n
    rows, cols = plots.grid_shape(n)
    tiles = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert all(t.shape == (5, 5, 3) for t in tiles)
    assert all(t.min() == pytest.approx(0) and t.max() == pytest.approx(1) for t in tiles)
    fig = plots.feature_map_grid(_photos(1)[0], np.random.default_rng(1).normal(size=(24, 24, n)), "maps")
    assert plots.image_panels(fig) == n + 1  # the maps and the input image
    assert len([ax for ax in fig.axes if ax.images and ax.get_title().isdigit()]) == n


def test_guided_figure_is_neurons_by_image_and_gradient():
    grads = np.random.default_rng(0).normal(size=(10, 48, 48, 3))
    fig = plots.guided_figure(_photos(10), grads, [f"n{i}" for i in range(10)], boxes=[(0, 0, 10, 10)] * 10)
    assert plots.image_panels(fig) == 20
    assert fig.axes[0].get_title().startswith("image") and fig.axes[1].get_title() == "guided backprop"
    shown = plots.deprocess_gradient(grads[0])
    assert shown.min() >= 0 and shown.max() <= 1 and abs(np.median(shown) - 0.5) < 0.02


def test_save_figure_writes_png_and_pdf_readable(tmp_path):
    cm = np.eye(10, dtype=int) * 5 + 1
    written = plots.save_figure(plots.confusion_figure(cm, CLASSES), tmp_path / "figures" / "cm.png")
    assert [p.name for p in written] == ["cm.png", "cm.pdf"]
    assert_sensible_png(written[0])
    assert written[1].read_bytes()[:5] == b"%PDF-"
    assert written[0].stat().st_mode & 0o777 == FILE_MODE  # as open() makes files, not the temp file's 0600
    assert written[1].stat().st_mode & 0o777 == FILE_MODE
    assert not [p for p in (tmp_path / "figures").iterdir() if p.name.startswith(".")]


# ---- visualize on a trained run -------------------------------------------------------------------


@pytest.fixture()
def run_copy(trained_run, tmp_path) -> Path:
    """A private copy of the shared tiny run, without test results or figures."""
    dest = tmp_path / trained_run.name
    shutil.copytree(trained_run, dest, ignore=shutil.ignore_patterns("figures", "test_metrics.json",
                                                                      "predictions.csv", "report.html"))
    return dest


def test_visualize_writes_every_figure(run_copy, monkeypatch):
    from inat.figures.visualize import visualize

    figures = {}
    save = plots.save_figure

    def capture(fig, path, pdf=True):
        figures[Path(path).stem] = plots.image_panels(fig)
        return save(fig, path, pdf)

    monkeypatch.setattr(plots, "save_figure", capture)
    written = visualize(run_copy)
    assert sorted(p.name for p in written) == sorted(f"{n}.{ext}" for n in RUN_PNGS for ext in ("png", "pdf"))
    for name in RUN_PNGS:
        assert_sensible_png(run_copy / "figures" / f"{name}.png")
    # tiny_cfg: 10 classes x 3 images; conv1 has 8 filters; 10 conv5 neurons x (image, gradient).
    assert figures == {"predictions": 30, "filters": 8, "feature_maps": 9, "guided_backprop": 20,
                       "confusion_matrix": 1}
    assert (run_copy / "test_metrics.json").is_file()  # the confusion matrix evaluated the run first


def test_visualize_is_seeded_and_subsets(run_copy):
    from inat.figures.visualize import visualize

    first = visualize(run_copy, what="grid", pdf=False)
    assert [p.name for p in first] == ["predictions.png"]
    before = first[0].read_bytes()
    visualize(run_copy, what=["grid"], pdf=False)
    assert first[0].read_bytes() == before


def test_receptive_field_box_holds_the_whole_gradient(trained_run):
    from inat.figures import guided
    from inat.models.common import load_model
    from inat.figures.visualize import receptive_field

    model = load_model(trained_run)
    size = model.input.shape[1]
    images = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    grad = guided.NeuronGradients(guided.activation_model(model, "conv2"))(images, [3], [5], [0])[0]
    x0, y0, w, h = receptive_field(model, "conv2", 3, 5, size)
    # conv1 3x3 -> pool 2 -> conv2 3x3: 8 px wide, unit (3, 5) of conv2 centred on input pixel (6.5, 10.5).
    assert (x0, y0, w, h) == (6.5, 2.5, 8.0, 8.0)
    ys, xs = np.nonzero(np.abs(grad).sum(axis=-1))
    assert ys.min() >= y0 and ys.max() <= y0 + h and xs.min() >= x0 and xs.max() <= x0 + w


def test_visualize_bad_inputs_are_one_line_errors(tmp_path, run_copy):
    from inat.errors import InatError
    from inat.figures.visualize import visualize

    with pytest.raises(InatError, match="unknown figure 'gradcam'"):
        visualize(run_copy, what="grid,gradcam")
    with pytest.raises(InatError, match="not a run directory"):
        visualize(tmp_path / "nowhere")


def test_part_b_run_gets_filters_and_grid_and_skips_guided(run_copy, caplog):
    """ResNet50 with random weights: first conv of the base (7x7x3x64, BGR flipped to RGB), no conv5."""
    from inat.models.common import make_model
    from inat.config import RunConfig
    from inat.figures.visualize import visualize

    cfg = RunConfig.load(run_copy / "config.yaml").replace(model="resnet50", weights="none")
    cfg.save(run_copy / "config.yaml")
    model = make_model(cfg, len(CLASSES))
    model.save(run_copy / "model.keras")
    with caplog.at_level(logging.INFO, logger="inat"):
        written = visualize(run_copy, what="filters,guided", pdf=False)
    assert [p.name for p in written] == ["filters.png", "feature_maps.png"]
    assert "guided backprop skipped" in caplog.text
    with Image.open(run_copy / "figures" / "filters.png") as im:
        assert im.size[0] >= 800


# ---- sweep report ---------------------------------------------------------------------------------


def fake_sweep(root: Path, n: int = 12, seed: int = 0) -> Path:
    """A sweep folder as both backends leave it: sweep.yaml and trials/<n>/ run directories."""
    from inat.config import RunConfig
    from inat.fsutil import write_csv, write_json

    rng = np.random.default_rng(seed)
    params = {"activation": ["relu", "elu", "selu"], "batch_norm": [True, False], "dropout": [0.0, 0.2, 0.4],
              "filt_org": [[32, 32, 32, 32, 32], [32, 64, 64, 128, 128]], "learning_rate": [1e-3, 1e-4]}
    spec = {"method": "bayes", "metric": {"name": "val_accuracy", "goal": "maximize"},
            "parameters": {**{k: {"values": v} for k, v in params.items()}, "epochs": {"value": 3}}}
    root.mkdir(parents=True)
    (root / "sweep.yaml").write_text(yaml.safe_dump(spec))
    start = time.time() - 3600
    for i in range(n):
        chosen = {k: v[rng.integers(len(v))] for k, v in params.items()}
        trial = root / "trials" / str(i)
        trial.mkdir(parents=True)
        RunConfig.from_dict({**chosen, "epochs": 3}).save(trial / "config.yaml")
        status = "running" if i == n - 1 else ("stopped" if i % 4 == 3 else "completed")
        epochs = {"running": 0, "stopped": 1, "completed": 3}[status]
        acc = 0.2 + 0.1 * chosen["batch_norm"] + rng.normal(0, 0.01)
        write_csv(trial / "history.csv", ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"],
                  [[e, 1.0, 0.5, 1.0, f"{acc - 0.01 * (3 - e):.4f}", 1.0] for e in range(1, epochs + 1)])
        write_json(trial / "run.json", {"status": status})
        (trial / "splits.json").write_text("{}")
        stamp = start + 60 * (n - i)  # creation order is the reverse of the folder names
        os.utime(trial / "splits.json", (stamp, stamp))
    return root


def test_sweep_report_from_trial_directories(tmp_path):
    from inat.figures.sweep_report import sweep_report

    sweep = fake_sweep(tmp_path / "sweeps" / "s1")
    written = sweep_report(sweep)
    assert [p.name for p in written] == ["trials.csv", "accuracy_vs_created.png", "parallel_coordinates.png",
                                         "param_correlation.png", "param_importance.png"]
    for png in written[1:]:
        assert_sensible_png(png)
    assert {p.stat().st_mode & 0o777 for p in written} == {FILE_MODE}
    with open(sweep / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12
    assert [r["trial"] for r in rows] == [str(i) for i in range(11, -1, -1)]  # oldest first
    assert {r["state"] for r in rows} == {"finished", "pruned", "running"}
    assert rows[0]["state"] == "running"
    assert rows[0]["best_val_accuracy"] == "" and rows[0]["epochs_done"] == "0"
    assert {"activation", "batch_norm", "filt_org", "learning_rate", "started", "best_epoch"} <= set(rows[0])
    assert rows[1]["filt_org"].startswith("[")  # pastes back into --set filt_org=[...]


def test_trial_start_time_survives_a_copy(tmp_path):
    """run.json's `updated` less the epochs' seconds beats file times, which `cp -r` resets."""
    import datetime as dt

    from inat.figures.trials import read_trials

    sweep = fake_sweep(tmp_path / "s", n=3)
    finished = sweep / "trials" / "0"
    (finished / "run.json").write_text('{"status": "completed", "updated": "2025-03-01T10:00:00+0000"}')
    running = sweep / "trials" / "2"
    (running / "run.json").write_text('{"status": "running", "updated": "2025-03-01T12:00:00+0000"}')
    trials = {t.name: t for t in read_trials(sweep)}
    utc = dt.timezone.utc
    assert trials["0"].started == dt.datetime(2025, 3, 1, 9, 59, 57, tzinfo=utc)  # 3 epochs of 1 s
    assert trials["2"].started == dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=utc)
    assert trials["1"].started > trials["2"].started  # no `updated`: the splits.json mtime


def test_sweep_correlation_finds_the_parameter_that_matters(tmp_path):
    from inat.figures.sweep_plots import correlations, importances
    from inat.figures.trials import read_trials, swept_keys

    sweep = fake_sweep(tmp_path / "s", n=24)
    trials = [t for t in read_trials(sweep) if t.best_val_accuracy is not None]
    keys = swept_keys(sweep, trials)
    assert keys == ["activation", "batch_norm", "dropout", "filt_org", "learning_rate"]
    corr = dict(correlations(trials, keys))
    assert corr["batch_norm"] > 0.8 and max(abs(r) for k, r in corr.items() if k != "batch_norm") < 0.6
    imp, why = importances(trials, keys)
    assert why == "" and set(imp) == set(keys) and sum(imp.values()) == pytest.approx(1.0)


def test_param_importance_is_optunas_own_plot_and_leaves_the_style_alone(tmp_path):
    import warnings

    import matplotlib
    from optuna.exceptions import ExperimentalWarning

    from inat.figures.sweep_plots import importance_figure, importances
    from inat.figures.trials import read_trials, swept_keys

    sweep = fake_sweep(tmp_path / "s", n=24)
    trials = [t for t in read_trials(sweep) if t.best_val_accuracy is not None]
    keys = swept_keys(sweep, trials)
    style = dict(matplotlib.rcParams)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = importance_figure(trials, keys, "s")
    assert not [w for w in caught if issubclass(w.category, ExperimentalWarning)]
    assert dict(matplotlib.rcParams) == style  # Optuna's plt.style.use("ggplot") stays inside the call
    (ax,) = fig.axes
    # What optuna.visualization.matplotlib.plot_param_importances sets, and PED-ANOVA's numbers.
    assert ax.get_title(loc="left") == "Hyperparameter Importances"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Hyperparameter Importance", "Hyperparameter")
    imp, _ = importances(trials, keys)
    bars = {label.get_text(): patch.get_width() for label, patch in zip(ax.get_yticklabels(), ax.patches)}
    assert bars == pytest.approx(imp) and max(bars, key=bars.get) == "batch_norm"
    assert "PED-ANOVA" in fig.get_suptitle() and f"{len(trials)} here" in fig.get_suptitle()
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_sweep_report_with_one_trial_only_draws_the_time_plot(tmp_path):
    from inat.figures.sweep_report import sweep_report

    sweep = fake_sweep(tmp_path / "s", n=1)
    assert [p.name for p in sweep_report(sweep)] == ["trials.csv", "accuracy_vs_created.png"]


# ---- HTML report ----------------------------------------------------------------------------------


def test_report_for_a_run_embeds_metrics_and_figures(run_copy):
    from inat.figures.report import write_report
    from inat.figures.visualize import visualize

    visualize(run_copy, what="grid,confusion", pdf=False)
    page = write_report(run_copy)
    assert page == run_copy / "report.html" and page.stat().st_mode & 0o777 == FILE_MODE
    text = page.read_text()
    # history plot + 2 figures, all inline; nothing refers to a file beside the page
    assert text.count('src="data:image/png;base64,') == 3
    assert "<img" in text and 'src="figures/' not in text
    assert "Test metrics" in text and "Amphibia" in text and "accuracy (recall)" in text
    assert "filt_org" in text


def test_report_for_a_sweep(tmp_path):
    from inat.figures.report import write_report

    sweep = fake_sweep(tmp_path / "s")
    text = write_report(sweep).read_text()
    assert text.count('src="data:image/png;base64,') == 4
    assert "Trials, best first" in text and text.count("<tr>") >= 13


def test_report_of_something_else_is_a_one_line_error(tmp_path):
    from inat.errors import InatError
    from inat.figures.report import write_report

    with pytest.raises(InatError, match="neither a run directory"):
        write_report(tmp_path)


# ---- commands -------------------------------------------------------------------------------------


def assert_one_line_error(result, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("inat-jobs: error")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr


@pytest.mark.parametrize("command", ["visualize", "sweep-report", "report"])
def test_help(command):
    result = cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_cli_visualize_and_report(run_copy):
    result = cli("visualize", "--run", str(run_copy), "--what", "confusion", "--no-pdf")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {run_copy / 'figures' / 'confusion_matrix.png'}"
    result = cli("report", str(run_copy))
    assert result.returncode == 0, result.stderr
    assert (run_copy / "report.html").is_file()


def test_cli_bad_what_is_one_line(run_copy):
    result = cli("visualize", "--run", str(run_copy), "--what", "grid,heatmap")
    assert_one_line_error(result, "unknown figure 'heatmap'")


def test_cli_sweep_report_by_id_and_unknown_id(tmp_path):
    fake_sweep(tmp_path / "sweeps" / "20250101-000000-abcd")
    result = cli("sweep-report", "20250101-000000-abcd", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sweeps" / "20250101-000000-abcd" / "trials.csv").is_file()
    result = cli("sweep-report", "nope", "--out", str(tmp_path))
    assert_one_line_error(result, "sweep 'nope' not found")
