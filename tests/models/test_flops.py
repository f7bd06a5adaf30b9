"""Question 1: the closed-form parameter and computation counts against the built Keras model."""

from __future__ import annotations

import keras
import pytest

from inat.config import RunConfig
from inat.models.flops import count, format_table
from inat.models.common import make_model

CONFIGS = [
    dict(filt_org=[32, 32, 32, 32, 32], kernel_size=[3, 3, 3, 3, 3], image_size=224),
    dict(filt_org=[32, 64, 64, 128, 128], kernel_size=[3, 5, 7, 9, 11], image_size=97, batch_norm=True),
    dict(filt_org=[128, 128, 64, 64, 32], kernel_size=[5, 5, 5, 5, 5], image_size=64, weight_decay=1e-3),
    dict(filt_org=[32, 64, 128, 256, 512], kernel_size=[3, 3, 5, 5, 7], image_size=128, batch_norm=True,
         weight_decay=5e-4, num_dense=256),
    dict(filt_org=[16, 16, 32, 32, 64], kernel_size=[11, 9, 7, 5, 3], image_size=33, num_dense=64),
    dict(filt_org=[8, 16, 16, 8, 4], kernel_size=[1, 3, 1, 3, 1], image_size=255, batch_norm=True,
         num_dense=10),
    dict(filt_org=[32, 64, 64, 128, 128], kernel_size=[3, 3, 3, 3, 3], image_size=299, dropout=0.0),
]


def _keras_macs(model: keras.Model) -> int:
    """Independent count from the built model: output pixels x kernel volume for convs, the kernel
    size for dense layers."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, _ = layer.output.shape
            total += h * w * int(layer.kernel.numpy().size)
        elif isinstance(layer, keras.layers.Dense):
            total += int(layer.kernel.numpy().size)
    return total


def _id(knobs: dict) -> str:
    return f"{knobs['image_size']}px-{knobs['filt_org'][0]}-bn{int(knobs.get('batch_norm', False))}"


@pytest.mark.parametrize("knobs", CONFIGS, ids=_id)
def test_formula_matches_keras(knobs):
    cfg = RunConfig(model="scratch", **knobs)
    model = make_model(cfg, 10)
    result = count(cfg, 10)
    assert result["formula"] is True
    assert result["params"] == model.count_params()
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    assert result["trainable_params"] == trainable
    assert result["macs"] == _keras_macs(model)
    assert result["flops"] == 2 * result["macs"]
    # Per-layer rows agree with Keras layer by layer, output shapes included.
    for row in result["layers"]:
        layer = model.get_layer(row["name"])
        assert row["params"] == layer.count_params(), row["name"]
        assert tuple(row["output"]) == tuple(layer.output.shape[1:]), row["name"]


def test_textbook_form_for_uniform_blocks():
    # Same m and k in every block, S divisible by 32, no batch norm: the docstring's short form.
    m, k, S, n, C = 32, 5, 256, 64, 10
    cfg = RunConfig(model="scratch", filt_org=[m] * 5, kernel_size=[k] * 5, image_size=S, num_dense=n)
    result = count(cfg, C)
    side5 = S // 32
    assert result["params"] == (
        (3 * k * k * m + m) + 4 * (k * k * m * m + m) + m * side5**2 * n + n + n * C + C
    )
    conv_macs = k * k * m * S * S * 3 + k * k * m * m * (S * S) * (1 / 4 + 1 / 16 + 1 / 64 + 1 / 256)
    assert result["macs"] == conv_macs + m * (S // 32) ** 2 * n + n * C


def test_other_ops_are_listed_separately():
    cfg = RunConfig(model="scratch", filt_org=[4] * 5, kernel_size=[3] * 5, image_size=32, num_dense=8)
    other = count(cfg, 10)["other_ops"]
    # conv outputs: 4 * (32^2 + 16^2 + 8^2 + 4^2 + 2^2) = 5456 elements
    assert other["bias_add"] == 5456 + 8 + 10 and other["activation"] == 5456 + 8
    assert other["batch_norm"] == 0
    assert other["max_pool"] == 3 * 4 * (16**2 + 8**2 + 4**2 + 2**2 + 1)
    bn = count(cfg.replace(batch_norm=True), 10)["other_ops"]
    assert bn["batch_norm"] == 2 * 5456 and bn["bias_add"] == 8 + 10


def test_format_table():
    cfg = RunConfig(model="scratch")
    text = format_table(count(cfg, 10))
    assert "conv5" in text and "predictions" in text
    assert f"{count(cfg, 10)['params']:,}" in text and "FLOPs" in text


def test_transfer_models_report_keras_counts_only():
    cfg = RunConfig(model="resnet50", weights="imagenet", trainable_layers=0)  # weights not needed
    result = count(cfg, 10)
    model = make_model(cfg.replace(weights="none"), 10)
    assert result["formula"] is False and result["macs"] is None and result["flops"] is None
    assert result["params"] == model.count_params()
    assert result["trainable_params"] == 2048 * 128 + 128 + 128 * 10 + 10  # only the head trains
    assert "formula only for the scratch CNN" in format_table(result)
