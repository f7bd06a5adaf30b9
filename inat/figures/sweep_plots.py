"""The sweep plots the assignment asks for, from `inat.figures.trials.Trial`s: val accuracy against
creation time, parallel coordinates, and W&B's correlation and importance panel as two figures.

The importance is Optuna's own plot (`plot_param_importances`, PED-ANOVA, which needs no
scikit-learn), on an in-memory study rebuilt from the trial rows (`importance_study`). The others
are drawn here because Optuna's plots cannot draw them; each function says why.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import matplotlib.dates as mdates
import numpy as np

from .plots import new_figure, save_figure
from .trials import display

log = logging.getLogger("inat")
STATE_STYLE = {  # state -> (colour, marker, legend label)
    "finished": ("#1f6feb", "o", "finished"),
    "pruned": ("#e36209", "v", "pruned (stopped early)"),
    "failed": ("#d1242f", "x", "failed"),
    "running": ("#8c959f", "s", "running"),
}


def write_all(trials, swept: list[str], out_dir: Path, title: str, pdf: bool = False) -> list[Path]:
    written = save_figure(accuracy_vs_created(trials, title), out_dir / "accuracy_vs_created.png", pdf)
    scored = [t for t in trials if t.best_val_accuracy is not None]
    if not swept or len(scored) < 2:
        log.info("sweep report: %d scored trial(s) and %d swept parameter(s): "
                 "no parallel/importance plots yet", len(scored), len(swept))
        return written
    fig = parallel_coordinates(scored, swept, title)
    written += save_figure(fig, out_dir / "parallel_coordinates.png", pdf)
    written += save_figure(correlation_figure(scored, swept, title), out_dir / "param_correlation.png", pdf)
    fig = importance_figure(scored, swept, title)
    written += save_figure(fig, out_dir / "param_importance.png", pdf)
    _close(fig)
    return written


def _close(fig) -> None:
    """Forget a figure Optuna drew through pyplot (pyplot keeps every figure until it is closed)."""
    import matplotlib.pyplot as plt  # lazy: pyplot, already loaded by Optuna's plot

    plt.close(fig)


# ---- 1. val accuracy against creation time --------------------------------------------------------


def _local(when):
    # Naive local time: matplotlib would show aware datetimes in UTC, not the user's clock.
    return when.astimezone().replace(tzinfo=None)


def accuracy_vs_created(trials, title: str = ""):
    # Hand-drawn: Optuna's plot_optimization_history puts the trial number on the x axis, evenly
    # spaced whatever the time between trials, and marks no state; plot_timeline has the time axis but
    # draws each trial's duration, not its accuracy. The assignment's plot is accuracy against the
    # time each trial was created.
    fig = new_figure(10, 5)
    ax = fig.add_subplot()
    for state, (color, marker, label) in STATE_STYLE.items():
        pts = [(_local(t.started), t.best_val_accuracy) for t in trials
               if t.state == state and t.best_val_accuracy is not None]
        if pts:
            x, y = zip(*pts)
            ax.scatter(x, y, c=color, marker=marker, s=46, label=f"{label} ({len(pts)})", zorder=3)
    scored = [t for t in trials if t.best_val_accuracy is not None]
    if scored:
        best = np.maximum.accumulate([t.best_val_accuracy for t in scored])
        ax.step([_local(t.started) for t in scored], best, where="post", color="#2da44e", lw=1.6, alpha=0.8,
                label="best so far", zorder=2)
        top = max(scored, key=lambda t: t.best_val_accuracy)
        late = top.started > scored[0].started + (scored[-1].started - scored[0].started) * 0.7
        ax.annotate(f"{top.name}: {top.best_val_accuracy:.3f}", (_local(top.started), top.best_val_accuracy),
                    xytext=(-8 if late else 8, 8), textcoords="offset points", fontsize=9,
                    ha="right" if late else "left")
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel("trial created (local time)")
    ax.set_ylabel("best val_accuracy")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9, loc="lower right")
    unscored = len(trials) - len(scored)
    note = f"; {unscored} without a finished epoch yet" if unscored else ""
    ax.set_title(f"Sweep {title}: val accuracy against creation time, {len(trials)} trials{note}",
                 fontsize=11)
    return fig


# ---- 2. parallel coordinates ----------------------------------------------------------------------


def _is_numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _log_scale(values: Sequence[float]) -> bool:
    return min(values) > 0 and max(values) / min(values) >= 10


def axis_positions(values: Sequence[Any]) -> tuple[list[float], list[tuple[float, str]]]:
    """Map one parameter's values to [0, 1]: numbers on a linear (or log) scale, anything else as
    evenly spaced categories. A grid of up to 5 numbers (dropout 0/0.2/0.4, dense 64/128/256/512) is
    spaced evenly in order too: on a linear axis 64 and 128 would sit on top of each other.
    Returns (position per value, [(tick position, tick label)])."""
    if _is_numeric(values) and len(set(values)) <= 5:
        levels = sorted(set(values))
        step = {v: (0.5 if len(levels) == 1 else i / (len(levels) - 1)) for i, v in enumerate(levels)}
        return [step[v] for v in values], [(step[v], f"{v:.3g}") for v in levels]
    if _is_numeric(values):
        use_log = _log_scale(values)
        f = (lambda v: math.log10(v)) if use_log else float
        lo, hi = min(map(f, values)), max(map(f, values))
        pos = (lambda v: 0.5 if hi == lo else (f(v) - lo) / (hi - lo))
        distinct = sorted(set(values))
        ticks = distinct if len(distinct) <= 8 else list(np.linspace(min(values), max(values), 5))
        if use_log and len(distinct) > 8:
            ticks = list(np.logspace(lo, hi, 5))
        return [pos(v) for v in values], [(pos(t), f"{t:.3g}") for t in ticks]
    labels = sorted({str(v) for v in values})
    step = {label: (0.5 if len(labels) == 1 else i / (len(labels) - 1)) for i, label in enumerate(labels)}
    return [step[str(v)] for v in values], [(step[label], label) for label in labels]


def parallel_coordinates(trials, swept: list[str], title: str = ""):
    # Hand-drawn: Optuna's plot_parallel_coordinate draws COMPLETE trials only, so the trials
    # hyperband stopped early (many, in a hyperband sweep) are missing, and given to it as complete
    # they could not be told apart; it sorts the parameter axes alphabetically whatever `params`
    # says, with the objective first, where W&B's plot ends on the metric.
    from matplotlib import cm, colors  # lazy: matplotlib's colour maps, for this plot only


    columns = swept + ["best val_accuracy"]
    table = [[display(t.config.get(k)) for t in trials] for k in swept]
    acc = [t.best_val_accuracy for t in trials]
    table.append(acc)
    mapped = [axis_positions(col) for col in table]
    ys = np.array([m[0] for m in mapped]).T  # (trial, axis)
    # A little seeded vertical jitter on the parameter axes, so trials sharing a value fan out
    # instead of drawing one line over another.
    ys[:, :-1] += np.random.default_rng(0).uniform(-0.025, 0.025, ys[:, :-1].shape)
    fig = new_figure(max(10.0, 1.7 * len(columns) + 1.5), 5.8)
    ax = fig.add_subplot()
    norm = colors.Normalize(min(acc), max(acc) if max(acc) > min(acc) else min(acc) + 1e-9)
    cmap = cm.viridis
    x = np.arange(len(columns))
    for i in np.argsort(acc):  # best drawn last, on top
        pruned = trials[i].state != "finished"
        ax.plot(x, ys[i], color=cmap(norm(acc[i])), lw=1.1 if pruned else 1.8, alpha=0.55 if pruned else 0.9,
                ls="--" if pruned else "-", zorder=2)
    best = int(np.argmax(acc))
    ax.plot(x, ys[best], color="#d1242f", lw=3.0, zorder=3,
            label=f"best: {trials[best].name} ({acc[best]:.3f})")
    for j, (_, ticks) in enumerate(mapped):
        ax.axvline(j, color="#444444", lw=1.0, zorder=1)
        for pos, label in ticks:
            ax.text(j + 0.04, pos, label, fontsize=8, va="center", ha="left", zorder=4,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    ax.set_xticks(x, columns, fontsize=9, rotation=20 if len(columns) > 7 else 0)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(columns) - 0.4)
    ax.set_ylim(-0.06, 1.06)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.03, pad=0.01,
                 label="best val_accuracy")
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.12), fontsize=9, frameon=False)
    ax.set_title(f"Sweep {title}: parameters -> best val accuracy, {len(trials)} trials "
                 "(dashed: pruned/stopped early)", fontsize=11)
    return fig


# ---- 3. correlation and importance ----------------------------------------------------------------


def correlations(trials, swept: list[str]) -> list[tuple[str, float]]:
    """Pearson r of each parameter with best val accuracy, as the W&B panel shows it: numbers (and
    booleans as 0/1, log10 for log-spaced values) directly; categories one value at a time (one-hot)."""

    acc = np.array([t.best_val_accuracy for t in trials], dtype=float)
    out = []
    for key in swept:
        values = [display(t.config.get(key)) for t in trials]
        if _is_numeric(values) or all(isinstance(v, bool) for v in values):
            v = np.array(values, dtype=float)
            if _is_numeric(values) and _log_scale(v):
                v = np.log10(v)
            out.append((key, _pearson(v, acc)))
        else:
            for level in sorted({str(v) for v in values}):
                one_hot = np.array([str(v) == level for v in values], float)
                out.append((f"{key} = {level}", _pearson(one_hot, acc)))
    return [(k, r) for k, r in out if not math.isnan(r)]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def importance_study(trials, swept: list[str]):
    """An in-memory Optuna study with one finished trial per scored trial, valued by its best val
    accuracy, over the swept keys that vary. Returns (study, "") or (None, why not)."""
    try:
        import optuna  # lazy: Optuna, for the importance only
        from optuna.distributions import CategoricalDistribution, FloatDistribution  # lazy: Optuna, as above
    except ImportError:
        return None, "Optuna is not installed"

    dists, params = {}, [dict() for _ in trials]
    for key in swept:
        values = [display(t.config.get(key)) for t in trials]
        if len({str(v) for v in values}) < 2:
            continue
        if _is_numeric(values) and len(set(values)) > 5:
            dists[key] = FloatDistribution(float(min(values)), float(max(values)), log=_log_scale(values))
            cast = float
        elif _is_numeric(values):
            # A grid of a few numbers is a set of choices: PED-ANOVA's density estimate over a float
            # range with three spikes in it ranked a parameter without any effect first.
            dists[key] = CategoricalDistribution(sorted({float(v) for v in values}))
            cast = float
        else:
            dists[key] = CategoricalDistribution(sorted({str(v) for v in values}))
            cast = str
        for p, v in zip(params, values):
            p[key] = cast(v)
    if not dists:
        return None, "no parameter varies across the trials"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for p, t in zip(params, trials):
        study.add_trial(optuna.trial.create_trial(params=p, distributions=dists, value=t.best_val_accuracy))
    return study, ""


def importances(trials, swept: list[str]) -> tuple[dict[str, float], str]:
    """Optuna's PED-ANOVA importance of each swept key, on `importance_study`.
    Returns ({key: importance}, "") or ({}, why not)."""
    study, why = importance_study(trials, swept)
    if study is None:
        return {}, why
    import optuna  # lazy: Optuna, as in importance_study

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())), ""
    except Exception as exc:  # noqa: BLE001 - too few trials, degenerate values: report, don't fail
        return {}, f"not computable ({type(exc).__name__}: {exc})"[:120]


def importance_figure(trials, swept: list[str], title: str = ""):
    """Optuna's own importance plot, `plot_param_importances` with the PED-ANOVA evaluator, of
    `importance_study`; where the importance cannot be computed, a figure that says why."""
    study, why = importance_study(trials, swept)
    if study is not None:
        import matplotlib  # lazy: matplotlib's rc_context, around Optuna's plot
        import optuna  # lazy: Optuna, for its plot
        from optuna.visualization.matplotlib import plot_param_importances  # lazy: Optuna, as above

        try:
            # Optuna's plots call plt.style.use("ggplot"): keep that style to this figure. The plot
            # functions are marked experimental; PED-ANOVA warns on few trials (the title says so).
            with matplotlib.rc_context(), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)
                ax = plot_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                                            target_name="best val_accuracy")
        except Exception as exc:  # noqa: BLE001 - too few trials, degenerate values: report, don't fail
            why = f"not computable ({type(exc).__name__}: {exc})"[:120]
        else:
            fig = ax.figure
            fig.set_size_inches(10, max(4.0, 0.45 * len(ax.get_yticks()) + 1.6))
            fig.suptitle(f"Sweep {title}: importance for best val_accuracy (Optuna PED-ANOVA; noisy below "
                         f"~30 trials, {len(trials)} here)", fontsize=11)
            return fig
    fig = new_figure(10, 4)
    fig.text(0.5, 0.5, f"importance {why}", ha="center", va="center", wrap=True)
    return fig


def correlation_figure(trials, swept: list[str], title: str = ""):
    """The correlation half of W&B's parameter importance panel: Pearson r of each parameter (value)
    with best val accuracy. Drawn here: Optuna has no correlation plot, only importances."""
    corr = sorted(correlations(trials, swept), key=lambda kv: kv[1])
    fig = new_figure(10, max(4.0, 0.32 * max(len(corr), 1) + 1.8))
    ax = fig.add_subplot()
    if corr:
        names, rs = zip(*corr)
        ax.barh(names, rs, color=["#2da44e" if r > 0 else "#d1242f" for r in rs])
        ax.axvline(0, color="#444444", lw=0.8)
        ax.set_xlim(-1, 1)
    else:
        ax.text(0.5, 0.5, "needs 3+ trials with varying values", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("Pearson correlation with best val_accuracy")
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"Sweep {title}: correlation with best val accuracy (categories: one value vs the rest), "
                 f"{len(trials)} trials", fontsize=11)
    return fig
