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

Backend-neutral: the rule is a `keras.ops.custom_gradient` with each activation's derivative written
out (`_slope`, checked against autodiff in tests/figures/test_guided.py); only taking the gradient of
the objective is the backend's own (`_tf_gradients`, `_jax_gradients`), as Keras has no portable
gradient call.
"""

from __future__ import annotations

from typing import Sequence

import math

import keras
import numpy as np
from keras import layers, ops

# The activations guided backprop knows how to treat (RunConfig.ACTIVATIONS).
GUIDED_ACTIVATIONS = ("relu", "elu", "selu", "gelu", "silu", "leaky_relu", "mish")


SELU_SCALE = 1.0507009873554805  # keras.activations.selu's scale


def guided(activation: str):
    """f(x) with the guided gradient rule above (a function of one tensor)."""
    name = _activation_name(activation)
    if name not in GUIDED_ACTIVATIONS:
        raise ValueError(f"guided backprop does not handle activation {activation!r}")
    f = keras.activations.get(name)

    @ops.custom_gradient
    def guided_f(x):
        def grad(*args, upstream=None):
            if upstream is None:  # TensorFlow and JAX pass it positionally, PyTorch by name
                (upstream,) = args
            gate = ops.logical_and(ops.greater(x, 0), ops.greater(upstream, 0))
            return ops.where(gate, upstream * _slope(name, x), ops.zeros_like(upstream))

        return f(x), grad

    return guided_f


def _slope(name: str, x):
    """f'(x) for x > 0, the only side the guided gate lets through (see the module doc)."""
    if name in ("relu", "elu", "leaky_relu"):
        return ops.ones_like(x)
    if name == "selu":
        return ops.full_like(x, SELU_SCALE)
    if name == "gelu":  # Keras's exact gelu, x * Phi(x): Phi(x) + x * phi(x)
        return 0.5 * (1.0 + ops.erf(x / math.sqrt(2.0))) + x * ops.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    sig = ops.sigmoid(x)
    if name == "silu":  # x * sigmoid(x)
        return sig * (1.0 + x * (1.0 - sig))
    t = ops.tanh(ops.softplus(x))  # mish: x * tanh(softplus(x)), softplus' = sigmoid
    return t + x * sig * (1.0 - t * t)


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
    fmap[i, rows[i], cols[i], channels[i]]. The indices travel as int32 tensors, so one compiled
    function serves every neuron and location.
    """

    def __init__(self, feature_model: keras.Model):
        self.feature_model = feature_model
        backend = keras.backend.backend()
        if backend == "tensorflow":
            self._fn = _tf_gradients(feature_model)
        elif backend == "jax":
            self._fn = _jax_gradients(feature_model)
        else:
            raise ValueError(f"guided backprop: no gradient call for the Keras backend {backend!r} (tensorflow, jax)")

    def __call__(
        self, images, rows: Sequence[int], cols: Sequence[int], channels: Sequence[int]
    ) -> np.ndarray:
        idx = [np.asarray(v, dtype=np.int32) for v in (rows, cols, channels)]
        return np.asarray(self._fn(np.asarray(images, dtype=np.float32), *idx))


def _objective(fmap, rows, cols, channels):
    """The sum over items of each item's own neuron (see NeuronGradients)."""
    flat = ops.reshape(fmap, (-1,))
    h, w, c = fmap.shape[1], fmap.shape[2], fmap.shape[3]
    index = ((ops.arange(ops.shape(fmap)[0], dtype="int32") * h + rows) * w + cols) * c + channels
    return ops.sum(ops.take(flat, index))


def _tf_gradients(model: keras.Model):
    import tensorflow as tf  # lazy: the TensorFlow backend's gradient tape

    shape = tuple(model.input.shape[1:])
    index_spec = tf.TensorSpec((None,), tf.int32)

    @tf.function(input_signature=[tf.TensorSpec((None, *shape), tf.float32), index_spec, index_spec, index_spec],
                 reduce_retracing=True)  # fmt: skip
    def grads(images, rows, cols, channels):
        with tf.GradientTape() as tape:
            tape.watch(images)
            objective = _objective(model(images, training=False), rows, cols, channels)
        return tape.gradient(objective, images)

    return grads


def _jax_gradients(model: keras.Model):
    import jax  # lazy: the JAX backend's autodiff

    def objective(images, trainable, non_trainable, rows, cols, channels):
        fmap, _ = model.stateless_call(trainable, non_trainable, images, training=False)
        return _objective(fmap, rows, cols, channels)

    grad = jax.jit(jax.grad(objective))

    def grads(images, rows, cols, channels):
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        return grad(images, trainable, non_trainable, rows, cols, channels)

    return grads


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
