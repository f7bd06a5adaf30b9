"""Guided backpropagation (Springenberg et al., 2015) for single neurons of a conv layer.

A "neuron" is one channel of a layer's output feature map at one spatial location. Its guided
gradient with respect to the input image shows which pixels excite it, with the noise of the plain
gradient suppressed: at every ReLU-family activation on the way back, only signals that are
positive going forward *and* positive coming back pass.

The rule at an activation y = f(x), for upstream gradient g (dL/dy):

    relu:                  dL/dx = g  where x > 0 and g > 0, else 0     (the paper's rule)
    elu, selu, gelu,       dL/dx = g * f'(x)  where x > 0 and g > 0, else 0
    silu, leaky_relu, mish

All seven activations are positive exactly where their input is, so `x > 0` means "this unit is
on" for every one of them, and the rule reduces to the paper's for relu (and leaky_relu). The
negative branch (elu/selu's saturation towards -alpha, the small dip of gelu/silu/mish) carries
"this unit is suppressed", which guided backprop discards by design. f'(x) on the positive side
is ~1 (selu: its 1.0507 scale), so it only keeps each activation's own slope. docs/figures.md has
the longer argument.

The gradients of several neurons are computed together: one forward and one backward pass over a
batch of (image, neuron, location) items, where item i's objective is its own neuron's activation.
Images in a batch do not interact (no batch-norm statistics in inference mode), so the gradient of
the sum with respect to image i is item i's gradient alone.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import layers

# The activations guided backprop knows how to treat (RunConfig.ACTIVATIONS).
GUIDED_ACTIVATIONS = ("relu", "elu", "selu", "gelu", "silu", "leaky_relu", "mish")


def guided(activation: str):
    """f(x) with the guided gradient rule above (a function of one tensor)."""
    name = _activation_name(activation)
    if name not in GUIDED_ACTIVATIONS:
        raise ValueError(f"guided backprop does not handle activation {activation!r}")
    f = keras.activations.get(name)

    @tf.custom_gradient
    def guided_f(x):
        def grad(upstream):
            gate = tf.logical_and(x > 0, upstream > 0)
            passed = tf.where(gate, upstream, tf.zeros_like(upstream))
            if name == "relu":
                return passed  # f'(x) = 1 wherever the gate is open
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = f(x)
            # Each activation is elementwise, so this is passed * f'(x).
            return tape.gradient(y, x, output_gradients=passed)

        return f(x), grad

    return guided_f


class GuidedActivation(layers.Layer):
    """Drop-in replacement for an Activation layer, same name, guided gradient."""

    def __init__(self, activation: str, **kwargs):
        super().__init__(**kwargs)
        self.activation = _activation_name(activation)
        self._fn = guided(self.activation)

    def call(self, x):
        return self._fn(x)

    def compute_output_shape(self, input_shape):
        return input_shape


def _activation_name(activation) -> str:
    if isinstance(activation, str):
        return "silu" if activation == "swish" else activation
    return getattr(activation, "__name__", None) or str(keras.activations.serialize(activation))


def guided_model(model: keras.Model, target: str) -> keras.Model:
    """Input -> output of layer `target`, with every ReLU-family activation made guided.

    The other layers are the model's own objects (shared, not copied), so the weights are the
    trained ones by construction. Only layers the gradient crosses matter; those after `target`
    are cut off.
    """

    def swap(layer):
        if isinstance(layer, layers.Activation):
            name = _activation_name(layer.activation)
            if name in GUIDED_ACTIVATIONS:
                return GuidedActivation(name, name=layer.name)
            if name != "linear":
                raise ValueError(f"layer {layer.name}: guided backprop does not handle activation {name!r}")
        if isinstance(layer, layers.ReLU):
            if layer.negative_slope or layer.max_value is not None or layer.threshold:
                raise ValueError(f"layer {layer.name}: only a plain ReLU layer can be made guided")
            return GuidedActivation("relu", name=layer.name)
        hidden = getattr(layer, "activation", None)
        if hidden is not None and not isinstance(layer, layers.Activation):
            name = _activation_name(hidden)
            if name not in ("linear", "softmax"):
                # Conv2D(activation="relu") hides its non-linearity where no gradient can be swapped.
                raise ValueError(
                    f"layer {layer.name}: has a built-in {name!r} activation; guided backprop needs it "
                    "as a separate Activation layer"
                )
        return layer

    # Cut first, then clone: a shared layer's `.output` would name its node in the original graph.
    clone = keras.models.clone_model(activation_model(model, target), clone_function=swap)
    return keras.Model(clone.input, clone.output, name=f"guided_{target}")


def activation_model(model: keras.Model, target: str) -> keras.Model:
    """Input -> output of layer `target`, with the model's own (unguided) layers."""
    return keras.Model(model.input, model.get_layer(target).output, name=f"features_{target}")


class NeuronGradients:
    """Batched input gradients of single neurons: `grads = NeuronGradients(fm)(images, rows, cols, channels)`.

    `feature_model` maps images to a feature map (B, H, W, C), e.g. `guided_model(...)` for guided
    backprop or `activation_model(...)` for the plain gradient. Item i's objective is
    fmap[i, rows[i], cols[i], channels[i]]. The indices travel as int32 tensors, so one traced
    graph serves every neuron and location.
    """

    def __init__(self, feature_model: keras.Model):
        self.feature_model = feature_model
        shape = tuple(feature_model.input.shape[1:])
        self._fn = tf.function(
            self._grads,
            input_signature=[
                tf.TensorSpec((None, *shape), tf.float32),
                tf.TensorSpec((None,), tf.int32),
                tf.TensorSpec((None,), tf.int32),
                tf.TensorSpec((None,), tf.int32),
            ],
            reduce_retracing=True,
        )

    def _grads(self, images, rows, cols, channels):
        with tf.GradientTape() as tape:
            tape.watch(images)
            fmap = self.feature_model(images, training=False)
            index = tf.stack([tf.range(tf.shape(images)[0]), rows, cols, channels], axis=1)
            objective = tf.reduce_sum(tf.gather_nd(fmap, index))
        return tape.gradient(objective, images)

    def __call__(
        self, images, rows: Sequence[int], cols: Sequence[int], channels: Sequence[int]
    ) -> np.ndarray:
        as_idx = lambda v: tf.convert_to_tensor(np.asarray(v, dtype=np.int32))  # noqa: E731
        out = self._fn(tf.convert_to_tensor(images, tf.float32), as_idx(rows), as_idx(cols), as_idx(channels))
        return out.numpy()


def strongest_locations(
    feature_model: keras.Model, images, channels: Sequence[int], batch_size: int = 32
) -> list[tuple[int, int, int, float]]:
    """For each channel: (image index, row, col, value) where it fires most over `images`.

    `images` is an array (N, S, S, 3) or an iterable of such batches; only the running maximum
    is kept, so any number of images fits in memory.
    """
    channels = np.asarray(channels, dtype=int)
    best = np.full(len(channels), -np.inf)
    where = np.zeros((len(channels), 3), dtype=int)
    offset = 0
    if isinstance(images, np.ndarray):
        batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    else:
        batches = images
    for batch in batches:
        fmap = np.asarray(feature_model(batch, training=False))[..., channels]  # (B, H, W, K)
        b, h, w, k = fmap.shape
        flat = fmap.transpose(3, 0, 1, 2).reshape(k, -1)
        arg = flat.argmax(axis=1)
        val = flat[np.arange(k), arg]
        better = val > best
        best[better] = val[better]
        img, row, col = np.unravel_index(arg, (b, h, w))
        where[better] = np.stack([img + offset, row, col], axis=1)[better]
        offset += b
    return [(int(i), int(r), int(c), float(v)) for (i, r, c), v in zip(where, best)]


def pick_channels(n_channels: int, n: int = 10, seed: int = 0, alive: np.ndarray | None = None) -> list[int]:
    """A seeded choice of `n` channels, preferring ones that fired (alive[c] True) at least once."""
    rng = np.random.default_rng(seed)
    pool = np.arange(n_channels)
    if alive is not None and alive.sum() >= min(n, n_channels):
        pool = pool[alive]
    return sorted(rng.choice(pool, size=min(n, len(pool)), replace=False).tolist())
