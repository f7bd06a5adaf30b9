"""`visualize(run_dir)`: the figures of one trained run, written to RUN/figures/ as PNG and PDF.

    predictions.png      3 seeded test images per class with true/predicted class and confidence
    filters.png          every filter of the first conv layer, as RGB tiles
    feature_maps.png     one seeded test image through every filter of that layer
    guided_backprop.png  10 neurons of conv5: the image where each fires most | its guided gradient
    confusion_matrix.png the test confusion matrix (runs `evaluate` first if test_metrics.json is missing)

Predictions are computed here for the images shown, so `inat-jobs test` need not have run. Part B
runs get every figure but guided backprop: "conv5" is a layer of the scratch CNN only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from .. import data
from ..config import RunConfig
from ..data.pipeline import decode_split
from ..errors import InatError

from ..models.common import conv_layer_names, input_size, load_model
from ..models.transfer import Preprocess, base_model
from ..rundir import RunDir
from . import guided, plots
from .names import WHAT, parse_what

log = logging.getLogger("inat")

GUIDED_LAYER = "conv5"
N_NEURONS = 10
# The neuron search keeps its image sample in memory: at most this many bytes of float32 pixels.
SAMPLE_BYTES = 512 * 2**20


def visualize(
    run_dir: str | os.PathLike,
    what: Iterable[str] = WHAT,
    data_root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    max_images: int = 200,
    pdf: bool = True,
) -> list[Path]:
    """Write the figures named in `what` to RUN/figures/; returns the files written."""
    what = parse_what(what)
    run = _Run(run_dir, data_root)
    written: list[Path] = []
    for name in what:
        paths = {"grid": _grid, "filters": _filters, "guided": _guided, "confusion": _confusion}[name](
            run, seed=seed, max_images=max_images, pdf=pdf
        )
        written.extend(paths)
    return written


class _Run:
    """A run directory and what the figures need from it, each loaded once and only when needed."""

    def __init__(self, run_dir, data_root):
        self.dir = Path(run_dir).resolve()
        if not (self.dir / "config.yaml").is_file():
            raise InatError(
                f"{self.dir}: not a run directory (no config.yaml); pass --run SCRATCH/runs/RUN_ID"
            )
        self.data_root = data_root
        self.cfg = RunConfig.load(self.dir / "config.yaml")
        self.out = self.dir / "figures"
        self._splits = self._model = None

    @property
    def splits(self) -> data.Splits:
        if self._splits is None:
            self._splits = data.Splits.load(self.dir / "splits.json", root=self.data_root)
        return self._splits

    @property
    def model(self):
        if self._model is None:
            self._model = load_model(RunDir(self.dir).require_model())
        return self._model

    @property
    def size(self) -> int:
        return input_size(self.cfg)

    def images(self, indices) -> tuple[np.ndarray, list[int]]:
        """Test images at `indices`, as the model sees them, and which of `indices` decoded."""
        paths = [self.splits.paths("test")[i] for i in indices]
        # The position travels as the label, so images the decoder drops cannot shift the rest.
        images, positions = decode_split(paths, list(range(len(paths))), self.size)
        if not len(positions):
            raise InatError(f"{self.splits.root}: none of the chosen test images could be read")
        return images.astype(np.float32), [int(indices[p]) for p in positions]

    def predict(self, images: np.ndarray) -> np.ndarray:
        batches = [images[i : i + 32] for i in range(0, len(images), 32)]
        return np.concatenate([self.model.predict_on_batch(batch) for batch in batches])


# ---- the figures ----------------------------------------------------------------------------------


def _grid(run: _Run, seed: int, pdf: bool, **_) -> list[Path]:
    rng = np.random.default_rng(seed)
    labels = np.asarray(run.splits.labels("test"))
    chosen = []
    for c in range(len(run.splits.classes)):
        members = np.flatnonzero(labels == c)
        chosen.extend(sorted(rng.choice(members, size=min(3, len(members)), replace=False).tolist()))
    images, kept = run.images(chosen)
    probs = run.predict(images)
    pred = probs.argmax(axis=1)
    fig = plots.prediction_grid(
        images, labels[kept], pred, probs[np.arange(len(pred)), pred], run.splits.classes,
        title=f"{run.dir.name} ({run.cfg.model}): 3 random test images per class; "
              f"{int((labels[kept] != pred).sum())} of {len(kept)} wrong (red)",
    )
    return plots.save_figure(fig, run.out / "predictions.png", pdf)


def first_conv(model) -> tuple[object, object]:
    """(layer owner, first conv layer): the model itself for scratch, the nested base for Part B."""
    names = conv_layer_names(model)
    if not names:
        raise InatError(f"model {model.name}: has no convolution layer to show")
    owner = base_model(model) or model
    return owner, owner.get_layer(names[0])


def _first_conv_features(model, layer):
    """images -> that layer's output. For Part B, the layers before the base (preprocessing) first."""
    import keras  # lazy: Keras is loaded by now; named here for its layer types

    base = base_model(model)
    if base is None:
        return keras.Model(model.input, layer.output)
    inner = keras.Model(base.input, layer.output)

    def run(images):
        x = images
        for outer in model.layers:
            if outer is base:
                return inner(x)
            if not isinstance(outer, keras.layers.InputLayer):
                x = outer(x)
        raise AssertionError("base model not found in its own model")  # pragma: no cover

    return run


def _input_is_bgr(model) -> bool:
    return any(isinstance(layer, Preprocess) and layer.mode == "caffe" for layer in model.layers)


def _filters(run: _Run, seed: int, pdf: bool, **_) -> list[Path]:
    model = run.model
    _, layer = first_conv(model)
    kernel = np.asarray(layer.get_weights()[0])
    if kernel.ndim != 4 or kernel.shape[2] != 3:
        log.info("visualize: %s's first conv layer %s does not see RGB (kernel %s); skipping filters",
                 run.cfg.model, layer.name, kernel.shape)
        return []
    if _input_is_bgr(model):
        kernel = kernel[:, :, ::-1, :]  # ResNet50's caffe preprocessing feeds BGR: show RGB
    where = f"{run.cfg.model}, layer {layer.name}"
    fig = plots.filter_grid(kernel, f"First conv layer ({where})")
    written = plots.save_figure(fig, run.out / "filters.png", pdf)

    index = int(np.random.default_rng(seed).integers(len(run.splits.test)))
    images, kept = run.images([index])
    fmaps = np.asarray(_first_conv_features(model, layer)(images))[0]
    label = run.splits.classes[run.splits.labels("test")[kept[0]]]
    name = os.path.basename(run.splits.test[kept[0]][0])
    fig = plots.feature_map_grid(images[0], fmaps, f"Feature maps of the first conv layer ({where})",
                                 caption=f"test image {name}\n(class {label})")
    return written + plots.save_figure(fig, run.out / "feature_maps.png", pdf)


def _guided(run: _Run, seed: int, max_images: int, pdf: bool, **_) -> list[Path]:
    model = run.model
    names = {layer.name for layer in model.layers}
    if GUIDED_LAYER not in names:
        log.info("visualize: guided backprop skipped: %s has no layer %r "
                 "(only the scratch CNN defines CONV5)", run.cfg.model, GUIDED_LAYER)
        return []
    # The neuron's value is the block's activation output (conv5 -> [bn5] -> act5) when there is one.
    target = "act5" if "act5" in names else GUIDED_LAYER
    rng = np.random.default_rng(seed)
    n_test = len(run.splits.test)
    budget = max(N_NEURONS, SAMPLE_BYTES // (run.size * run.size * 3 * 4))
    sample = sorted(rng.choice(n_test, size=min(max_images, budget, n_test), replace=False).tolist())
    images, kept = run.images(sample)

    fmodel = guided.activation_model(model, target)
    n_channels = int(fmodel.output.shape[-1])
    spots = guided.strongest_locations(fmodel, images, range(n_channels))
    alive = np.array([value > 0 for *_, value in spots])
    channels = guided.pick_channels(n_channels, N_NEURONS, seed=seed, alive=alive)
    picked = [spots[c] for c in channels]
    idx = np.array([p[0] for p in picked])
    rows, cols = [p[1] for p in picked], [p[2] for p in picked]
    grads = guided.NeuronGradients(guided.guided_model(model, target))(images[idx], rows, cols, channels)

    classes, test_labels = run.splits.classes, run.splits.labels("test")
    labels = [f"{GUIDED_LAYER} channel {c}\nclass: {classes[test_labels[kept[i]]]}\n{target} = {v:.2f}"
              for c, (i, _, _, v) in zip(channels, picked)]
    boxes = [receptive_field(model, target, r, c, run.size) for r, c in zip(rows, cols)]
    fig = plots.guided_figure(
        images[idx], grads, labels, boxes,
        title=f"Guided backpropagation, {len(channels)} neurons of {GUIDED_LAYER} ({run.cfg.activation}):\n"
              f"each on the test image and location (box) where it fires most, of {len(kept)} sampled",
    )
    return plots.save_figure(fig, run.out / "guided_backprop.png", pdf)


def receptive_field(model, target: str, row: int, col: int, size: int) -> tuple[float, float, float, float]:
    """(x0, y0, width, height) in input pixels of the unit at (row, col) of layer `target`'s output,
    walking the sequential conv/pool stack of the scratch CNN (imshow coordinates: pixel p at p)."""
    import keras  # lazy: as above

    rf, jump, start = 1.0, 1.0, 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            k, s, d = layer.kernel_size[0], layer.strides[0], layer.dilation_rate[0]
        elif isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
            k, s, d = layer.pool_size[0], layer.strides[0], 1
        else:
            k = s = d = 1
        if k > 1 or s > 1:
            span = (k - 1) * d * jump
            if getattr(layer, "padding", "same") == "valid":
                start += span / 2
            rf += span
            jump *= s
        if layer.name == target:
            break
    cy, cx = start + row * jump, start + col * jump
    x0, y0 = max(cx - rf / 2, -0.5), max(cy - rf / 2, -0.5)
    x1, y1 = min(cx + rf / 2, size - 0.5), min(cy + rf / 2, size - 0.5)
    return (x0, y0, x1 - x0, y1 - y0)


def _confusion(run: _Run, pdf: bool, **_) -> list[Path]:
    path = run.dir / "test_metrics.json"
    if not path.is_file():
        from ..evaluate import evaluate  # lazy: evaluation, only when test_metrics.json is missing

        log.info("visualize: no test_metrics.json yet; evaluating %s on the test split first", run.dir.name)
        evaluate(run.dir, run.data_root)
    metrics = RunDir(run.dir).read("test_metrics.json")
    cm = np.asarray(metrics["confusion_matrix"])
    fig = plots.confusion_figure(
        cm, metrics["classes"],
        title=f"{run.dir.name} ({run.cfg.model}): test accuracy {metrics['accuracy']:.1%} "
              f"on {metrics['n']} images",
    )
    return plots.save_figure(fig, run.out / "confusion_matrix.png", pdf)
