"""The run figures, as pure functions of numpy arrays: each returns a matplotlib Figure.

Nothing here loads a model or an image; `inat.figures.visualize` does that and calls these. Every function
uses the Agg backend through `matplotlib.figure.Figure` directly (no pyplot state), so they are safe
in batch jobs without a display and in threads.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..fsutil import atomic_path

RIGHT = "#1a7f37"  # green
WRONG = "#d1242f"  # red
DPI = 150


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, pdf: bool = True) -> list[Path]:
    """Write PATH.png (and PATH.pdf) atomically; returns the files written. They get the mode of any
    file the user writes (0666 less the umask), so figures on shared scratch are as readable by the
    project group as everything else: `atomic_path` gives its temp file that mode and savefig keeps it."""
    path = Path(path).with_suffix(".png")
    written = []
    for fmt in ("png", "pdf") if pdf else ("png",):
        target = path.with_suffix(f".{fmt}")
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight", pad_inches=0.15)
        written.append(target)
    return written


def image_panels(fig: Figure) -> int:
    """How many panels of a figure show an image (what the tests count)."""
    return sum(1 for ax in fig.axes if ax.images)


def grid_shape(n: int) -> tuple[int, int]:
    """Rows x columns for n panels: the most square exact rectangle (64 -> 8x8, 32 -> 4x8,
    16 -> 4x4, 12 -> 3x4); when that is too thin (a prime, say), a near-square grid with blanks."""
    if n <= 0:
        return (0, 0)
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    cols = n // rows
    if cols > 3 * rows and n > 4:
        rows = math.isqrt(n)
        cols = math.ceil(n / rows)
    return rows, cols


def _clean(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _frame(ax, color: str, width: float) -> None:
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(color)
        spine.set_linewidth(width)


def _as_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(image), 0, 255).astype(np.uint8)


# ---- prediction grid ------------------------------------------------------------------------------


def prediction_grid(
    images: Sequence[np.ndarray], true: Sequence[int], pred: Sequence[int], confidence: Sequence[float],
    classes: Sequence[str], per_class: int = 3, title: str = "",
) -> Figure:
    """One column per true class, `per_class` test images in it; each panel names the true and the
    predicted class with its confidence; mistakes get a red title and a thick red frame."""
    n_classes = len(classes)
    fig = new_figure(1.85 * n_classes, 2.35 * per_class + 0.7)
    axes = fig.subplots(per_class, n_classes, squeeze=False)
    slot = {c: 0 for c in range(n_classes)}
    for ax in axes.flat:
        _clean(ax)
    for image, t, p, conf in zip(images, true, pred, confidence):
        t, p = int(t), int(p)
        if slot[t] >= per_class:
            continue
        ax = axes[slot[t], t]
        slot[t] += 1
        ax.imshow(_as_uint8(image))
        ok = t == p
        mark = "" if ok else "✗ "
        ax.set_title(
            f"true: {classes[t]}\n{mark}pred: {classes[p]} ({conf:.0%})",
            fontsize=8.5, color=RIGHT if ok else WRONG, fontweight="normal" if ok else "bold", pad=3,
        )
        _frame(ax, RIGHT if ok else WRONG, 1.0 if ok else 4.0)
    for ax in axes.flat:
        if not ax.images:
            ax.set_axis_off()  # a class with fewer test images than `per_class`
    wrong = sum(int(t) != int(p) for t, p in zip(true, pred))
    fig.suptitle(
        title or f"Test images and predictions: {len(true)} images, {wrong} wrong (red frames)",
        fontsize=13,
    )
    fig.get_layout_engine().set(h_pad=0.06, w_pad=0.04)
    return fig


# ---- first conv layer -----------------------------------------------------------------------------


def filter_grid(kernel: np.ndarray, title: str) -> Figure:
    """All filters of a first conv layer, kernel shape (k, k, 3, F), as RGB tiles, each scaled to
    its own min..max so that the colour pattern (not the magnitude) shows."""
    kernel = np.asarray(kernel, dtype=np.float32)
    k_h, k_w, _, n = kernel.shape
    rows, cols = grid_shape(n)
    cell = max(1.0, 6.5 / cols)  # small layers get bigger tiles, not wider gaps
    fig = new_figure(cell * cols + 0.4, cell * rows + 0.9)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        _clean(ax)
        if i >= n:
            ax.set_axis_off()
            continue
        w = kernel[..., i]
        lo, hi = float(w.min()), float(w.max())
        tile = (w - lo) / (hi - lo) if hi > lo else np.full_like(w, 0.5)
        ax.imshow(tile, interpolation="nearest")
        ax.set_title(str(i), fontsize=7, pad=2)
    fig.suptitle(f"{title}\n{n} filters of {k_h}x{k_w}x3, each scaled to its own range", fontsize=11)
    return fig


def feature_map_grid(image: np.ndarray, fmaps: np.ndarray, title: str, caption: str = "") -> Figure:
    """One input image (left) and its feature maps (H, W, F) through every filter (right grid, same
    shape as the filter grid), each map on its own colour scale."""
    fmaps = np.asarray(fmaps, dtype=np.float32)
    n = fmaps.shape[-1]
    rows, cols = grid_shape(n)
    cell = 1.25
    fig = new_figure(cell * cols + 3.6, max(cell * rows + 1.0, 3.8))
    spec = fig.add_gridspec(rows, cols + 3)
    ax = fig.add_subplot(spec[: min(rows, 3), :3] if rows >= 3 else spec[:, :3])
    ax.imshow(_as_uint8(image))
    ax.set_title(caption or "input", fontsize=9)
    _clean(ax)
    for i in range(rows * cols):
        ax = fig.add_subplot(spec[i // cols, 3 + i % cols])
        _clean(ax)
        if i >= n:
            ax.set_axis_off()
            continue
        ax.imshow(fmaps[..., i], cmap="viridis", interpolation="nearest")
        ax.set_title(str(i), fontsize=7, pad=2)
    fig.suptitle(f"{title}\n{n} feature maps, each on its own colour scale (yellow = high)", fontsize=11)
    return fig


# ---- guided backpropagation -----------------------------------------------------------------------


def deprocess_gradient(grad: np.ndarray) -> np.ndarray:
    """Input-space gradient -> displayable RGB in [0, 1]: centred, scaled by 0.15/std, shifted to
    0.5 (grey = no gradient), the usual way guided backprop images are shown."""
    g = np.asarray(grad, dtype=np.float64)
    g = g - g.mean()
    std = g.std()
    if std > 0:
        g = g / std * 0.15
    return np.clip(g + 0.5, 0.0, 1.0)


def guided_figure(
    images: Sequence[np.ndarray], grads: Sequence[np.ndarray], labels: Sequence[str],
    boxes: Sequence[tuple[float, float, float, float]] | None = None, title: str = "",
) -> Figure:
    """Rows: neurons. Columns: the test image where the neuron fires most (its receptive field
    boxed) | the guided-backprop gradient of that neuron with respect to the image."""
    n = len(images)
    fig = new_figure(7.2, 2.75 * n + 0.6)
    axes = fig.subplots(n, 2, squeeze=False)
    for i in range(n):
        left, right = axes[i]
        left.imshow(_as_uint8(images[i]))
        right.imshow(deprocess_gradient(grads[i]))
        if boxes is not None:
            for ax in (left, right):
                x0, y0, w, h = boxes[i]
                ax.add_patch(Rectangle((x0, y0), w, h, fill=False, edgecolor="#ffd400", linewidth=1.4))
        left.set_ylabel(labels[i], fontsize=9, rotation=0, ha="right", va="center", labelpad=8)
        for ax in (left, right):
            _clean(ax)
        if i == 0:
            left.set_title("image (where it fires most)", fontsize=10)
            right.set_title("guided backprop", fontsize=10)
    fig.suptitle(title or "Guided backpropagation", fontsize=12)
    return fig


# ---- confusion matrix -----------------------------------------------------------------------------


def confusion_figure(cm: np.ndarray, classes: Sequence[str], title: str = "") -> Figure:
    """Counts in every cell, colour = share of the true class (row) predicted as each column."""
    cm = np.asarray(cm, dtype=int)
    k = len(classes)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = max(6.0, 0.75 * k + 2.5)
    fig = new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    im = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            if cm[i, j] or i == j:
                dark = rates[i, j] > 0.55
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=9,
                        color="white" if dark else "#222222", fontweight="bold" if i == j else "normal")
    ax.set_xticks(range(k), classes, rotation=45, ha="right", rotation_mode="anchor", fontsize=9)
    ax.set_yticks(range(k), classes, fontsize=9)
    ax.set_xlabel("predicted class", fontsize=10)
    ax.set_ylabel("true class", fontsize=10)
    total = int(cm.sum())
    acc = np.trace(cm) / total if total else 0.0
    ax.set_title(title or f"Test confusion matrix: accuracy {acc:.1%} on {total} images", fontsize=12)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cbar.set_label("share of the true class", fontsize=9)
    return fig
