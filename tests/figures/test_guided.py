"""Guided backpropagation: the gradient rule by hand, batched == one at a time, no retracing."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
from keras import layers  # noqa: E402

from inat.figures import guided  # noqa: E402

SELU_SCALE = 1.0507009873554805


def _grad_through(fn, x, upstream):
    x = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return tape.gradient(y, x, output_gradients=tf.constant(upstream, tf.float32)).numpy()


def test_guided_relu_passes_only_positive_input_and_positive_upstream():
    x = [-2.0, -0.5, 0.5, 2.0, 3.0, 1.0]
    up = [1.0, -1.0, 1.0, -1.0, 0.5, 0.0]
    # x>0 and up>0 only at indices 2 and 4.
    np.testing.assert_allclose(_grad_through(guided.guided("relu"), x, up), [0, 0, 1.0, 0, 0.5, 0])


@pytest.mark.parametrize("name", ["elu", "selu", "gelu", "silu", "leaky_relu", "mish"])
def test_other_activations_keep_their_own_slope_behind_the_same_gate(name):
    x = np.array([-2.0, -0.5, 0.5, 2.0, 3.0], np.float32)
    up = np.array([1.0, 1.0, -1.0, 2.0, 0.5], np.float32)
    f = keras.activations.get(name)
    plain = _grad_through(f, x, np.ones_like(x))  # f'(x)
    want = np.where((x > 0) & (up > 0), up * plain, 0.0)
    got = _grad_through(guided.guided(name), x, up)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert got[0] == got[1] == 0.0  # the negative branch never passes, even with upstream > 0
    # The forward pass is the activation itself.
    forward = guided.guided(name)(tf.constant(x)).numpy()
    np.testing.assert_allclose(forward, f(tf.constant(x)).numpy(), rtol=1e-6)


def _hand_model(activation: str) -> keras.Model:
    """x (1x1x3) -> conv1 (1x1, 3 units, known weights) -> act1 -> conv2 (1x1, 1 unit) -> output.

    For x = (1, 2, 1) the hidden pre-activations are h = (3, 1, -2):
      unit a: h > 0, w2 = +2  -> positive input, positive upstream: passes
      unit b: h > 0, w2 = -1  -> negative upstream: blocked by guided, passed by the plain gradient
      unit c: h < 0, w2 = +3  -> negative input: blocked (relu blocks it in the plain gradient too)
    """
    inp = keras.Input((1, 1, 3))
    x = layers.Conv2D(3, 1, use_bias=False, name="conv1")(inp)
    x = layers.Activation(activation, name="act1")(x)
    x = layers.Conv2D(1, 1, use_bias=False, name="conv2")(x)
    model = keras.Model(inp, x)
    w1 = np.array([[1.0, 0.0, -1.0], [1.0, 0.5, 0.0], [0.0, 0.0, -1.0]], np.float32)  # (in, out)
    w2 = np.array([[2.0], [-1.0], [3.0]], np.float32)
    model.get_layer("conv1").set_weights([w1.reshape(1, 1, 3, 3)])
    model.get_layer("conv2").set_weights([w2.reshape(1, 1, 3, 1)])
    return model


X = np.array([1.0, 2.0, 1.0], np.float32).reshape(1, 1, 1, 3)


def test_guided_gradient_of_hand_model_relu():
    model = _hand_model("relu")
    grads = guided.NeuronGradients(guided.guided_model(model, "conv2"))(X, [0], [0], [0])
    # Only unit a passes: d out / d x = w1[:, a] * w2[a] = (1, 1, 0) * 2.
    np.testing.assert_allclose(grads.reshape(3), [2.0, 2.0, 0.0])
    plain = guided.NeuronGradients(guided.activation_model(model, "conv2"))(X, [0], [0], [0])
    # The plain gradient also lets unit b through: + (0, 0.5, 0) * -1.
    np.testing.assert_allclose(plain.reshape(3), [2.0, 1.5, 0.0])


def test_guided_gradient_of_hand_model_selu():
    model = _hand_model("selu")
    grads = guided.NeuronGradients(guided.guided_model(model, "conv2"))(X, [0], [0], [0])
    np.testing.assert_allclose(grads.reshape(3), np.array([2.0, 2.0, 0.0]) * SELU_SCALE, rtol=1e-5)
    plain = guided.NeuronGradients(guided.activation_model(model, "conv2"))(X, [0], [0], [0])
    assert plain.reshape(3)[0] != pytest.approx(grads.reshape(3)[0])  # unit c's selu tail leaks into plain


def test_guided_model_shares_the_trained_weights_and_leaves_the_model_alone():
    model = _hand_model("relu")
    gm = guided.guided_model(model, "conv2")
    assert gm.get_layer("conv1") is model.get_layer("conv1")
    assert isinstance(gm.get_layer("act1"), guided.GuidedActivation)
    assert type(model.get_layer("act1")) is layers.Activation
    np.testing.assert_allclose(gm(X).numpy(), model(X).numpy())


def test_built_in_conv_activation_is_refused():
    inp = keras.Input((4, 4, 3))
    out = layers.Conv2D(2, 3, activation="relu", name="conv1")(inp)
    with pytest.raises(ValueError, match="built-in 'relu'"):
        guided.guided_model(keras.Model(inp, out), "conv1")


def scratch_like(activation="relu", filters=(4, 4, 8, 8, 12), size=32, seed=0) -> keras.Model:
    """A small model with the scratch CNN's layer names (conv{i} -> bn{i} -> act{i} -> pool{i})."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inp)
    for i, f in enumerate(filters, start=1):
        x = layers.Conv2D(f, 3, padding="same", name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.Activation(activation, name=f"act{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(8, name="dense")(x)
    x = layers.Activation(activation, name="dense_act")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    out = layers.Dense(10, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out)


@pytest.mark.parametrize("activation", ["relu", "selu"])
def test_batched_equals_one_neuron_at_a_time(activation):
    model = scratch_like(activation)
    images = np.random.default_rng(1).uniform(0, 255, (10, 32, 32, 3)).astype(np.float32)
    fmodel = guided.activation_model(model, "act5")
    channels = guided.pick_channels(12, 10, seed=0)
    spots = guided.strongest_locations(fmodel, images, channels, batch_size=4)
    idx, rows, cols = (np.array([s[k] for s in spots]) for k in range(3))
    grad = guided.NeuronGradients(guided.guided_model(model, "act5"))
    batched = grad(images[idx], rows, cols, channels)
    assert batched.shape == (10, 32, 32, 3)
    for i in range(10):
        single = grad(images[idx[i] : idx[i] + 1], rows[i : i + 1], cols[i : i + 1], channels[i : i + 1])
        np.testing.assert_allclose(batched[i], single[0], rtol=1e-4, atol=1e-6)
    assert np.abs(batched).reshape(10, -1).max(axis=1).min() > 0  # every neuron got a gradient
    # One traced graph for every batch size and neuron: indices are tensors, not Python ints.
    assert grad._fn.experimental_get_tracing_count() == 1


def test_strongest_locations_finds_the_maximum():
    inp = keras.Input((4, 4, 2))
    fmodel = keras.Model(inp, layers.Identity()(inp))
    images = np.zeros((5, 4, 4, 2), np.float32)
    images[3, 1, 2, 0] = 7.0
    images[0, 3, 0, 1] = 2.0
    images[4, 0, 0, 1] = 1.0
    spots = guided.strongest_locations(fmodel, images, [0, 1], batch_size=2)
    assert spots == [(3, 1, 2, 7.0), (0, 3, 0, 2.0)]


def test_pick_channels_is_seeded_and_prefers_live_channels():
    alive = np.zeros(64, bool)
    alive[::3] = True
    a = guided.pick_channels(64, 10, seed=4, alive=alive)
    assert a == guided.pick_channels(64, 10, seed=4, alive=alive)
    assert len(set(a)) == 10 and all(alive[c] for c in a)
    assert guided.pick_channels(5, 10) == [0, 1, 2, 3, 4]
