"""`write_report(path)`: one self-contained HTML page for a run or a sweep directory.

Images are embedded as base64 data URIs, so the single file can be copied off the cluster, mailed
or attached to a report without its folder. The page only reads what is already there (plus a
history plot drawn on the fly, and the sweep plots, which are cheap): run `inat-jobs test` and
`inat-jobs visualize` first to have the metrics and the figures in it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path


from ..errors import InatError
from ..fsutil import read_json, write_text
from ..rundir import RunDir
from .trials import read_trials, swept_keys

# Figures in the order a reader wants them, with what they show.
RUN_FIGURES = {
    "predictions": "Test images with true and predicted class (red: wrong)",
    "confusion_matrix": "Test confusion matrix",
    "filters": "Filters of the first conv layer",
    "feature_maps": "Feature maps of the first conv layer for one test image",
    "guided_backprop": "Guided backpropagation of 10 conv5 neurons",
}
SWEEP_FIGURES = {
    "accuracy_vs_created": "Best val accuracy of each trial against its creation time",
    "parallel_coordinates": "Parameters of each trial and its best val accuracy",
    "param_correlation": "Correlation of each parameter (value) with best val accuracy",
    "param_importance": "Importance of each parameter for best val accuracy (Optuna, PED-ANOVA)",
}
CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#1f2328}
h1{font-size:1.6em} h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}
td,th{border:1px solid #d0d7de;padding:.25em .6em;text-align:left} th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0} img{max-width:100%;border:1px solid #eaeef2} figcaption{color:#59636e;font-size:.9em}
.note{color:#59636e}
"""


def write_report(path: str | os.PathLike) -> Path:
    """Write PATH/report.html for a run directory or a sweep directory; returns its path."""
    path = Path(path).resolve()
    if (path / "config.yaml").is_file():
        page = run_page(path)
    elif (path / "trials").is_dir() or (path / "sweep.json").is_file():
        page = sweep_page(path)
    else:
        raise InatError(f"{path}: neither a run directory (config.yaml) nor a sweep directory (trials/)")
    out = path / "report.html"
    write_text(out, page)
    return out


def run_page(run_dir: Path) -> str:
    run = RunDir(run_dir)
    info, cfg = run.info(), run.config()
    parts = [f"<h1>Run {_e(run_dir.name)}</h1>", _kv_table({
        "model": cfg.model, "status": info.get("status", "?"),
        "epochs": f"{info.get('epochs_done', '?')} of {cfg.epochs}",
        "best val_accuracy": _fmt(info.get("best_val_accuracy")), "best epoch": info.get("best_epoch", "?"),
        "data": info.get("data_root", "?"), "updated": info.get("updated", "?"),
    })]
    parts.append("<h2>Test metrics</h2>")
    metrics = run.read("test_metrics.json")
    if metrics is not None:
        parts.append(_metrics_html(metrics))
    else:
        parts.append('<p class="note">No test_metrics.json: run <code>inat-jobs test --run RUN</code>.</p>')
    history = run.history()
    parts.append("<h2>Training history</h2>")
    parts.append(_img(_history_png(history), "loss and accuracy per epoch") if history
                 else '<p class="note">No finished epoch yet.</p>')
    parts.append("<h2>Figures</h2>")
    parts.append(_figures(run_dir / "figures", RUN_FIGURES, "inat-jobs visualize --run RUN"))
    parts.append("<h2>Config</h2>" + _kv_table(cfg.to_dict()))
    if info.get("versions"):
        parts.append("<h2>Versions</h2>" + _kv_table(info["versions"]))
    return _page(f"Run {run_dir.name}", parts)


def sweep_page(sweep_dir: Path) -> str:
    from .sweep_report import sweep_report  # lazy: it draws with matplotlib

    files = sweep_report(sweep_dir)  # refresh trials.csv and the plots: cheap, no model involved
    trials = read_trials(sweep_dir)
    spec = _json_or_empty(sweep_dir / "sweep.json")
    keys = swept_keys(sweep_dir, trials)
    parts = [f"<h1>Sweep {_e(sweep_dir.name)}</h1>", _kv_table({
        "backend": spec.get("backend", "?"), "created": spec.get("created", "?"), "trials": len(trials),
        "finished": sum(t.state == "finished" for t in trials), "trials.csv": str(files[0]),
    })]
    plots_html = _figures(sweep_dir / "figures", SWEEP_FIGURES, "inat-jobs sweep-report ID")
    parts.append("<h2>Plots</h2>" + plots_html)
    ranked = sorted(trials, key=lambda t: -1.0 if t.best_val_accuracy is None else t.best_val_accuracy,
                    reverse=True)
    head = ["trial", "state", "epochs", "best val_accuracy", *keys]
    rows = [[t.name, t.state, t.epochs, _fmt(t.best_val_accuracy), *(_short(t.config.get(k)) for k in keys)]
            for t in ranked]
    parts.append("<h2>Trials, best first</h2>" + _table(head, rows))
    return _page(f"Sweep {sweep_dir.name}", parts)


# ---- pieces ---------------------------------------------------------------------------------------


def _metrics_html(m: dict) -> str:
    head = f"<p>Accuracy <b>{m['accuracy']:.2%}</b> on {m['n']} test images.</p>"
    rows = [[name, r["n"], f"{r['accuracy']:.3f}", f"{r['precision']:.3f}"]
            for name, r in m["per_class"].items()]
    return head + _table(["class", "n", "accuracy (recall)", "precision"], rows)


def _history_png(history: list[dict]) -> bytes:
    from .plots import new_figure  # lazy: matplotlib

    fig = new_figure(11, 3.8)
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    for ax, key in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.plot(epochs, [h[key] for h in history], "o-", label=f"train {key}")
        ax.plot(epochs, [h[f"val_{key}"] for h in history], "s-", label=f"val {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _figures(folder: Path, known: dict[str, str], how: str) -> str:
    pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not pngs:
        return f'<p class="note">No figures yet: run <code>{_e(how)}</code>.</p>'
    order = {name: i for i, name in enumerate(known)}
    pngs.sort(key=lambda p: (order.get(p.stem, len(order)), p.name))
    return "\n".join(_img(p.read_bytes(), known.get(p.stem, p.stem)) for p in pngs)


def _img(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _kv_table(mapping: dict) -> str:
    return _table(["key", "value"], [[k, _short(v)] for k, v in mapping.items()])


def _table(head: list, rows: list[list]) -> str:
    def cell(v):
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        cls = ' class="num"' if number or _numeric_text(v) else ""
        return f"<td{cls}>{_e(v)}</td>"

    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, parts: list[str]) -> str:
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def _json_or_empty(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def _short(value) -> str:
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return value


def _fmt(value) -> str:
    return "?" if value is None else f"{float(value):.4f}"


def _numeric_text(v) -> bool:
    try:
        float(v)
        return isinstance(v, str)
    except (TypeError, ValueError):
        return False


def _e(value) -> str:
    return html.escape(str(value))
