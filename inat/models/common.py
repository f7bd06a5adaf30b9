"""The two model families of the assignment behind one interface, built from a RunConfig.

Every model takes float32 RGB images in [0, 255] of shape (input_size(cfg), input_size(cfg), 3) and
sparse integer labels, and does its own preprocessing. A saved `model.keras` is therefore all that
evaluation, prediction grids and guided backprop need: no preprocessing rule has to be remembered
next to it.

* Part A, "scratch" (`inat.models.scratch`): five conv blocks and a dense head, every knob from the
  config.
* Part B, the ImageNet bases (`inat.models.transfer`) without their top, with a new pooling + dense
  head and the first layers frozen.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras
from keras import layers

from ..errors import InatError
from .scratch import scratch_model
from .transfer import BASES, Preprocess, base_model, transfer_model

_CONV_TYPES = (layers.Conv2D, layers.SeparableConv2D, layers.DepthwiseConv2D)


def input_size(cfg) -> int:
    """Side in pixels of the images the data pipeline must produce for this config.

    Part A uses `cfg.image_size`. Part B ignores `image_size` and uses the size its base was trained
    at (299, or 224 for ResNet50): the pretrained filters expect objects at that scale, and it keeps
    one number per base instead of a second knob that silently changes what transfer means.
    """
    return BASES[cfg.model][1] if cfg.is_transfer else cfg.image_size


def make_model(cfg, n_classes: int, synchronized: bool = False) -> keras.Model:
    """The uncompiled model for `cfg` (compile with `compile_model`). Build it under the run's
    `inat.devices.Compute.scope()`: the dtype policy in force is the model's precision.

    synchronized: Part A's batch norm computes its statistics over the global batch across the
    replicas of a distributed run (as one device would), not per replica. The ImageNet bases keep
    Keras's own layers: their frozen batch norms use moving statistics anyway.
    """
    if cfg.is_transfer:
        return transfer_model(cfg, n_classes)
    return scratch_model(cfg, n_classes, synchronized=synchronized)


def compile_model(model: keras.Model, cfg, jit_compile: bool | str = "auto") -> None:
    # Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer (auto_scale_loss).
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )


def conv_layer_names(model: keras.Model) -> list[str]:
    """Names of the convolution layers in order: conv1..conv5 for scratch.

    For Part B they are the base's layers (Conv2D, and Xception's separable convs), found with
    `base_model(model).get_layer(name)`, not `model.get_layer(name)`.
    """
    base = base_model(model)
    owner = model if base is None else base
    return [layer.name for layer in owner.layers if isinstance(layer, _CONV_TYPES)]


def load_model(path: str | Path, compile: bool = True) -> keras.Model:
    """Load a saved `model.keras` (or a run directory holding one) with one-line errors."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise InatError(f"{path}: no trained model here - run `inat-jobs train` first")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        # Keras would report this as "File not found", which sends people looking in the wrong place.
        raise InatError(
            f"{path}: not a readable Keras model (not a .keras zip archive: truncated or overwritten) "
            f"- re-run `inat-jobs train`"
        )
    try:
        # Preprocess is registered when this module is imported; naming it too is harmless.
        return keras.saving.load_model(
            path, custom_objects={"inat>Preprocess": Preprocess}, compile=compile
        )
    except Exception as exc:  # noqa: BLE001 - zip, h5py and deserialisation errors alike
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise InatError(
            f"{path}: not a readable Keras model ({reason}) - was the job killed while saving? "
            f"Re-run `inat-jobs train`"
        ) from None
