"""The two model families of the assignment, built from a RunConfig.

Every model takes float32 RGB images in [0, 255] of shape (input_size(cfg), input_size(cfg), 3) and
sparse integer labels, and does its own preprocessing. A saved `model.keras` is therefore all that
evaluation, prediction grids and guided backprop need: no preprocessing rule has to be remembered
next to it.

* Part A, "scratch": five conv blocks and a dense head, every knob from the config.
* Part B, the ImageNet bases (InceptionV3, InceptionResNetV2, ResNet50, Xception) without their top,
  with a new pooling + dense head and the first layers frozen.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras
from keras import layers, ops

from ..errors import InatError
from .weights import resolve_weights

# Part B bases: constructor, the input side the ImageNet weights were trained at, and the
# preprocessing mode of the matching keras.applications.<module>.preprocess_input.
BASES = {
    "inceptionv3": (keras.applications.InceptionV3, 299, "tf"),
    "inceptionresnetv2": (keras.applications.InceptionResNetV2, 299, "tf"),
    "resnet50": (keras.applications.ResNet50, 224, "caffe"),
    "xception": (keras.applications.Xception, 299, "tf"),
}
# Name of the nested base model inside a Part B model: `model.get_layer(BASE_NAME)`.
BASE_NAME = "base"
_CONV_TYPES = (layers.Conv2D, layers.SeparableConv2D, layers.DepthwiseConv2D)


def input_size(cfg) -> int:
    """Side in pixels of the images the data pipeline must produce for this config.

    Part A uses `cfg.image_size`. Part B ignores `image_size` and uses the size its base was trained
    at (299, or 224 for ResNet50): the pretrained filters expect objects at that scale, and it keeps
    one number per base instead of a second knob that silently changes what transfer means.
    """
    return BASES[cfg.model][1] if cfg.is_transfer else cfg.image_size


@keras.saving.register_keras_serializable(package="inat")
class Preprocess(layers.Layer):
    """keras.applications' `preprocess_input` as a layer, so it is saved inside `model.keras`.

    A Lambda layer would also work but can only be reloaded with `safe_mode=False`. The two modes
    are Keras's: "tf" scales [0, 255] to [-1, 1] (Inception*, Xception); "caffe" flips RGB to BGR and
    subtracts the ImageNet channel means (ResNet50). tests/test_models.py checks both against Keras.
    """

    CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("tf", "caffe"):
            raise ValueError(f"Preprocess mode must be 'tf' or 'caffe', got {mode!r}")
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        mean = ops.convert_to_tensor(self.CAFFE_BGR_MEAN, dtype=self.compute_dtype)
        return ops.flip(x, axis=-1) - mean

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def make_model(cfg, n_classes: int) -> keras.Model:
    """The uncompiled model for `cfg` (compile with `compile_model`)."""
    if cfg.is_transfer:
        return _transfer_model(cfg, n_classes)
    return _scratch_model(cfg, n_classes)


def _l2(cfg):
    # Weight decay as Keras's L2 penalty (factor * sum(w**2) added to the loss) on every kernel we
    # create; biases and BN parameters are not decayed, the usual choice.
    return keras.regularizers.L2(cfg.weight_decay) if cfg.weight_decay > 0 else None


def _scratch_model(cfg, n_classes: int) -> keras.Model:
    s = cfg.image_size
    inputs = keras.Input((s, s, 3), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i, (filters, kernel) in enumerate(zip(cfg.filt_org, cfg.kernel_size), start=1):
        # "same" padding keeps the side at s, s/2, s/4, ... whatever the kernel, so any kernel size
        # the config allows works at any image size >= 32 (with "valid", 11x11 kernels at 64 px
        # would shrink the map to nothing after a few blocks).
        # With batch norm the conv bias is dropped: BN subtracts the mean and adds its own beta, so a
        # bias would be a dead parameter. flops.py counts parameters the same way.
        x = layers.Conv2D(
            filters,
            kernel,
            padding="same",
            use_bias=not cfg.batch_norm,
            kernel_regularizer=_l2(cfg),
            name=f"conv{i}",
        )(x)
        if cfg.batch_norm:
            # Momentum 0.9, not Keras's 0.99: the moving statistics used at evaluation must catch
            # up within an epoch or two (a few hundred steps on small data), or validation and test
            # accuracy read near chance while training accuracy climbs.
            x = layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        # A separate Activation layer (not `Conv2D(activation=...)`): guided backprop finds the
        # activations by name (act1..act5) and replaces their gradient.
        x = layers.Activation(cfg.activation, name=f"act{i}")(x)
        # Pool size 2, "valid": odd sides are floored (97 -> 48), which flops.py assumes too.
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(cfg.num_dense, kernel_regularizer=_l2(cfg), name="dense")(x)
    x = layers.Activation(cfg.activation, name="dense_act")(x)
    x = layers.Dropout(cfg.dropout, name="dropout")(x)
    outputs = layers.Dense(
        n_classes, activation="softmax", kernel_regularizer=_l2(cfg), name="predictions"
    )(x)
    return keras.Model(inputs, outputs, name="scratch_cnn")


def _transfer_model(cfg, n_classes: int) -> keras.Model:
    build, size, mode = BASES[cfg.model]
    weights = resolve_weights(cfg)  # None or a local file: never a download at training time
    base = build(include_top=False, weights=None, input_shape=(size, size, 3), name=BASE_NAME)
    if weights is not None:
        # Loaded here rather than through `weights=` (which does the same `load_weights` call) so
        # that a broken or mismatched file becomes one line naming the file.
        try:
            base.load_weights(weights)
        except Exception as exc:  # noqa: BLE001 - h5py/Keras raise many types for a bad file
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise InatError(
                f"weights file {weights} cannot be loaded into {cfg.model} ({reason}); "
                f"if it is a cached download, delete it and run `inat-jobs fetch-weights` again"
            ) from None
    freeze_base(base, cfg.trainable_layers)

    inputs = keras.Input((size, size, 3), name="image")
    x = Preprocess(mode, name="preprocess")(inputs)
    # No `training=False` here: in Keras 3 a functional model passes fit()'s training=True to every
    # layer, overriding a call-site False (keras-team/keras#20285). freeze_base freezes the BN
    # layers instead, which is what keeps them in inference mode.
    x = base(x)
    pool = layers.GlobalAveragePooling2D if cfg.pooling == "avg" else layers.GlobalMaxPooling2D
    x = pool(name="pool")(x)
    # The head's activation is fixed to relu: `activation` is a Part A knob.
    x = layers.Dense(cfg.num_dense, activation="relu", kernel_regularizer=_l2(cfg), name="dense")(x)
    x = layers.Dropout(cfg.dropout, name="dropout")(x)
    outputs = layers.Dense(
        n_classes, activation="softmax", kernel_regularizer=_l2(cfg), name="predictions"
    )(x)
    return keras.Model(inputs, outputs, name=f"{cfg.model}_transfer")


def freeze_base(base: keras.Model, trainable_layers: int) -> None:
    """Freeze all but the last `trainable_layers` layers of the base (see `base_layers`).

    0 freezes the whole base; a number >= the base's depth unfreezes all of it except the
    BatchNormalization layers, which are always frozen (see below). (The obvious
    `for layer in base.layers[:-k]` would freeze nothing for k=0, since `[:-0]` is empty.)
    """
    body = base_layers(base)
    first_trainable = max(len(body) - trainable_layers, 0)
    base.trainable = True
    for i, layer in enumerate(body):
        # BatchNormalization stays frozen even in the trainable tail: a Keras 3 BN layer with
        # trainable=False runs in inference mode, so the ImageNet moving statistics are used and
        # not overwritten by small, differently distributed iNaturalist batches (the usual
        # fine-tuning recipe). Its gamma/beta stay fixed too.
        layer.trainable = i >= first_trainable and not isinstance(layer, layers.BatchNormalization)


def base_layers(base: keras.Model) -> list:
    """The layers `trainable_layers` counts: `base.layers` without its InputLayer (no weights)."""
    return [layer for layer in base.layers if not isinstance(layer, layers.InputLayer)]


def base_model(model: keras.Model) -> keras.Model | None:
    """The nested ImageNet base of a Part B model, None for the scratch CNN."""
    try:
        return model.get_layer(BASE_NAME)
    except ValueError:
        return None


def compile_model(model: keras.Model, cfg) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
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
