"""Part B: an ImageNet base (InceptionV3, InceptionResNetV2, ResNet50, Xception) without its top, with a
new pooling + dense head and the first layers frozen.

The base's own preprocessing is a layer of the model (`Preprocess`), so a saved `model.keras` takes
the same float32 RGB images in [0, 255] as the scratch CNN. The nested base is the layer named
BASE_NAME (`base_model`).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from ..errors import InatError
from .scratch import l2
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


@keras.saving.register_keras_serializable(package="inat")
class Preprocess(layers.Layer):
    """keras.applications' `preprocess_input` as a layer, so it is saved inside `model.keras`.

    A Lambda layer would also work but can only be reloaded with `safe_mode=False`. The two modes
    are Keras's: "tf" scales [0, 255] to [-1, 1] (Inception*, Xception); "caffe" flips RGB to BGR and
    subtracts the ImageNet channel means (ResNet50). tests/models/test_models.py checks both against Keras.
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


def transfer_model(cfg, n_classes: int) -> keras.Model:
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
    x = layers.Dense(cfg.num_dense, activation="relu", kernel_regularizer=l2(cfg), name="dense")(x)
    x = layers.Dropout(cfg.dropout, name="dropout")(x)
    # float32 whatever the dtype policy: under mixed precision the softmax and the loss stay exact.
    outputs = layers.Dense(
        n_classes, activation="softmax", kernel_regularizer=l2(cfg), name="predictions", dtype="float32"
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
