"""The model layer: every model knob visibly changes the built model; Part B bases, preprocessing,
freezing, weights files and save/load round trips."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest

from inat.config import ACTIVATIONS, RunConfig
from inat.errors import InatError
from inat.models.common import compile_model, conv_layer_names, input_size, load_model, make_model
from inat.models.transfer import BASES, Preprocess, base_layers, base_model, freeze_base
from inat.models.weights import WEIGHT_FILES

# Keras's own weight saving/loading converts tensors with np.array(x), which numpy 2 flags on
# every variable; it is not ours to fix and would bury real warnings.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

SMALL = dict(image_size=32, filt_org=[4, 4, 8, 8, 8], num_dense=8)


def scratch(**changes) -> keras.Model:
    return make_model(RunConfig(model="scratch", **{**SMALL, **changes}), 10)


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


# ---- Part A: one test per knob -------------------------------------------------------------------


def test_kernel_size_sets_each_conv_kernel():
    model = scratch(kernel_size=[3, 5, 7, 9, 11])
    shapes = [tuple(model.get_layer(f"conv{i}").kernel.shape) for i in range(1, 6)]
    assert [s[:2] for s in shapes] == [(3, 3), (5, 5), (7, 7), (9, 9), (11, 11)]


def test_filt_org_sets_each_conv_width():
    model = scratch(filt_org=[2, 3, 5, 7, 11])
    assert [model.get_layer(f"conv{i}").filters for i in range(1, 6)] == [2, 3, 5, 7, 11]
    # ...and each conv's input depth is the previous one's width (3 for RGB first).
    assert [model.get_layer(f"conv{i}").kernel.shape[2] for i in range(1, 6)] == [3, 2, 3, 5, 7]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_is_a_separate_named_layer(activation):
    model = scratch(activation=activation)
    for name in [f"act{i}" for i in range(1, 6)] + ["dense_act"]:
        layer = model.get_layer(name)
        assert isinstance(layer, keras.layers.Activation)
        assert layer.activation.__name__ == activation
    # Guided backprop needs the nonlinearity outside the conv.
    assert all(model.get_layer(f"conv{i}").activation.__name__ == "linear" for i in range(1, 6))


def test_batch_norm_adds_bn_and_drops_conv_bias():
    on, off = scratch(batch_norm=True), scratch(batch_norm=False)
    names_on = [layer.name for layer in on.layers]
    assert [n for n in names_on if n.startswith("bn")] == ["bn1", "bn2", "bn3", "bn4", "bn5"]
    assert names_on.index("bn1") == names_on.index("conv1") + 1 == names_on.index("act1") - 1
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in off.layers)
    assert not on.get_layer("conv1").use_bias and off.get_layer("conv1").use_bias


def test_dropout_rate():
    assert scratch(dropout=0.4).get_layer("dropout").rate == pytest.approx(0.4)
    assert scratch(dropout=0.0).get_layer("dropout").rate == 0.0


def test_weight_decay_puts_l2_on_every_kernel():
    model = scratch(weight_decay=5e-4)
    for name in [f"conv{i}" for i in range(1, 6)] + ["dense", "predictions"]:
        reg = model.get_layer(name).kernel_regularizer
        assert isinstance(reg, keras.regularizers.L2) and reg.l2 == pytest.approx(5e-4)
    model(images(1, 32))
    assert len(model.losses) == 7
    plain = scratch(weight_decay=0.0)
    assert plain.get_layer("conv1").kernel_regularizer is None
    plain(images(1, 32))
    assert plain.losses == []


def test_num_dense_sets_dense_units():
    assert scratch(num_dense=37).get_layer("dense").units == 37


def test_image_size_sets_input_shape_and_odd_sides_floor():
    cfg = RunConfig(model="scratch", **{**SMALL, "image_size": 97})
    model = make_model(cfg, 10)
    assert input_size(cfg) == 97
    assert model.input_shape == (None, 97, 97, 3)
    assert model.get_layer("pool5").output.shape[1:3] == (3, 3)  # 97 48 24 12 6 3
    assert model.predict(images(2, 97), verbose=0).shape == (2, 10)


def test_learning_rate_reaches_the_optimizer():
    cfg = RunConfig(model="scratch", learning_rate=3e-4, **SMALL)
    model = make_model(cfg, 10)
    compile_model(model, cfg)
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(3e-4)
    assert model.loss == "sparse_categorical_crossentropy"


def test_scratch_output_and_preprocessing():
    model = scratch()
    assert model.get_layer("rescale").scale == pytest.approx(1 / 255)
    assert model.get_layer("predictions").activation.__name__ == "softmax"
    probs = model.predict(images(3, 32), verbose=0)
    assert probs.shape == (3, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert conv_layer_names(model) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert base_model(model) is None


def test_scratch_trains_a_step_with_every_block_on():
    cfg = RunConfig(model="scratch", batch_norm=True, weight_decay=1e-4, activation="mish", **SMALL)
    model = make_model(cfg, 10)
    compile_model(model, cfg)
    history = model.fit(images(8, 32), np.arange(8) % 10, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])


# ---- Part B ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", sorted(BASES))
def test_input_size_is_the_bases_own(model_name):
    cfg = RunConfig(model=model_name, image_size=128)
    assert input_size(cfg) == (224 if model_name == "resnet50" else 299)


@pytest.mark.parametrize("model_name", sorted(BASES))
def test_preprocess_layer_equals_keras_preprocess_input(model_name):
    module = {
        "inceptionv3": keras.applications.inception_v3,
        "inceptionresnetv2": keras.applications.inception_resnet_v2,
        "resnet50": keras.applications.resnet50,
        "xception": keras.applications.xception,
    }[model_name]
    x = images(2, 8)
    expected = module.preprocess_input(x.copy())  # works in place on float arrays
    got = keras.ops.convert_to_numpy(Preprocess(BASES[model_name][2])(x))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("model_name", sorted(BASES))
def test_each_base_builds_at_its_size(model_name):
    cfg = RunConfig(model=model_name, weights="none")
    model = make_model(cfg, 10)
    size = input_size(cfg)
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, 10)
    assert model.get_layer("preprocess").mode == BASES[model_name][2]
    base = base_model(model)
    names = conv_layer_names(model)
    assert len(names) > 5 and all(base.get_layer(n) for n in names)


def test_family_picks_the_base():
    model = make_model(RunConfig(model="xception", weights="none", trainable_layers=0), 10)
    assert model.name == "xception_transfer"
    assert any(isinstance(layer, keras.layers.SeparableConv2D) for layer in base_model(model).layers)
    assert "block14_sepconv2" in conv_layer_names(model)


def test_transfer_head_knobs():
    cfg = RunConfig(
        model="resnet50", weights="none", pooling="max", dropout=0.3, num_dense=17, weight_decay=1e-3
    )
    model = make_model(cfg, 7)
    assert isinstance(model.get_layer("pool"), keras.layers.GlobalMaxPooling2D)
    assert model.get_layer("dense").units == 17
    assert model.get_layer("dropout").rate == pytest.approx(0.3)
    assert model.get_layer("dense").kernel_regularizer.l2 == pytest.approx(1e-3)
    assert model.output_shape == (None, 7)
    avg = make_model(cfg.replace(pooling="avg", weight_decay=0.0), 7)
    assert isinstance(avg.get_layer("pool"), keras.layers.GlobalAveragePooling2D)
    assert avg.get_layer("dense").kernel_regularizer is None


@pytest.fixture(scope="module")
def resnet():
    return make_model(RunConfig(model="resnet50", weights="none", trainable_layers=10, dropout=0.0), 10)


def _is_bn(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def test_trainable_layers_freezes_all_but_the_last(resnet):
    base = base_model(resnet)
    body = base_layers(base)
    assert body[0].name == "conv1_pad"  # the InputLayer is not counted
    expected = [i >= len(body) - 10 and not _is_bn(layer) for i, layer in enumerate(body)]
    assert [layer.trainable for layer in body] == expected
    assert sum(expected) == 7  # 3 of the last 10 ResNet50 layers are BatchNormalization
    try:
        freeze_base(base, 0)  # 0 freezes the whole base (`layers[:-0]` would freeze nothing)
        assert base.trainable_weights == []
        freeze_base(base, 10_000)  # more than the depth: everything but BN trains
        assert all(layer.trainable != _is_bn(layer) for layer in body)
        conv_weights = [w for layer in body if not _is_bn(layer) for w in layer.weights]
        assert len(base.trainable_weights) == len(conv_weights) > 0
    finally:
        freeze_base(base, 10)


def test_base_batch_norm_stays_in_inference_mode(resnet):
    # fit() calls the model with training=True; with dropout 0 the output must not change, because
    # every BN of the base (frozen or in the trainable tail) uses its moving statistics.
    x = images(2, 224)
    np.testing.assert_allclose(resnet(x, training=True), resnet(x, training=False), atol=1e-5)
    # Sensitivity check: with BN left trainable, training=True does reach the base's BN layers
    # (a call-site training=False would not have stopped it in Keras 3).
    base = base_model(resnet)
    pre = resnet.get_layer("preprocess")(x)
    np.testing.assert_allclose(base(pre, training=True), base(pre, training=False), atol=1e-5)
    try:
        for layer in base_layers(base)[-10:]:
            layer.trainable = True
        assert not np.allclose(base(pre, training=True), base(pre, training=False), atol=1e-2)
    finally:
        freeze_base(base, 10)


def test_save_load_round_trip_transfer(resnet, tmp_path):
    x = images(2, 224)
    resnet.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path)  # a run directory is accepted too
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), resnet.predict(x, verbose=0))
    assert isinstance(loaded.get_layer("preprocess"), Preprocess)
    np.testing.assert_allclose(loaded(x, training=True), loaded(x, training=False), atol=1e-5)
    assert len(loaded.trainable_weights) == len(resnet.trainable_weights)


def test_save_load_round_trip_scratch(tmp_path):
    cfg = RunConfig(
        model="scratch", batch_norm=True, activation="leaky_relu", weight_decay=1e-4, **SMALL
    )
    model = make_model(cfg, 10)
    compile_model(model, cfg)
    model.fit(images(4, 32), np.arange(4), epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    x = images(3, 32, seed=1)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.get_layer("act3").activation.__name__ == "leaky_relu"


def test_load_model_errors_are_one_line(tmp_path):
    with pytest.raises(InatError, match="no trained model here - run `inat-jobs train` first"):
        load_model(tmp_path)
    junk = tmp_path / "model.keras"
    junk.write_bytes(b"half a file")
    with pytest.raises(InatError, match="not a readable Keras model") as info:
        load_model(junk)
    assert "\n" not in str(info.value)


# ---- Part B weights from local files -------------------------------------------------------------


@pytest.fixture(scope="module")
def xception_source():
    """A no-top Xception with random weights, standing in for a pretrained one."""
    return keras.applications.Xception(include_top=False, weights=None, input_shape=(299, 299, 3))


def _base_features(model, x):
    pre = model.get_layer("preprocess")(x)
    return keras.ops.convert_to_numpy(base_model(model)(pre, training=False))


def test_weights_from_a_keras3_weights_file(xception_source, tmp_path):
    path = tmp_path / "xception.weights.h5"
    xception_source.save_weights(path)
    model = make_model(RunConfig(model="xception", weights=str(path)), 10)
    x = images(1, 299)
    pre = keras.applications.xception.preprocess_input(x.copy())
    np.testing.assert_array_equal(_base_features(model, x), xception_source(pre, training=False))


def test_imagenet_weights_from_the_cache(xception_source, tmp_path, monkeypatch):
    # The cached ImageNet files are legacy (Keras 2) .h5 files; write one in that format under the
    # name Keras uses, and check weights=imagenet picks it up from $KERAS_HOME/models.
    from keras.src.legacy.saving import legacy_h5_format

    cached = tmp_path / "models" / WEIGHT_FILES["xception"].fname
    cached.parent.mkdir()
    with h5py.File(cached, "w") as fh:
        legacy_h5_format.save_weights_to_hdf5_group(fh, xception_source)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    model = make_model(RunConfig(model="xception", weights="imagenet"), 10)
    x = images(1, 299)
    pre = keras.applications.xception.preprocess_input(x.copy())
    np.testing.assert_array_equal(_base_features(model, x), xception_source(pre, training=False))


@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
def test_wrong_or_broken_weights_file_is_one_line(xception_source, tmp_path):
    path = tmp_path / "xception.weights.h5"
    xception_source.save_weights(path)
    with pytest.raises(InatError, match="cannot be loaded into resnet50") as info:
        make_model(RunConfig(model="resnet50", weights=str(path)), 10)
    assert "\n" not in str(info.value)
    broken = tmp_path / "broken.h5"
    broken.write_bytes(path.read_bytes()[:4096])
    with pytest.raises(InatError, match="fetch-weights"):
        make_model(RunConfig(model="xception", weights=str(broken)), 10)
