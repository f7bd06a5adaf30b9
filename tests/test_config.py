"""The run config: defaults, YAML loading, --set overrides and one-line validation errors."""

import pytest
import yaml

from inat.config import RunConfig, parse_overrides
from inat.errors import ConfigError


def test_defaults_are_the_seed_best_part_a_config():
    cfg = RunConfig()
    assert cfg.model == "scratch"
    assert cfg.kernel_size == [3, 3, 3, 3, 3]
    assert cfg.filt_org == [32, 64, 64, 128, 128]
    assert (cfg.weight_decay, cfg.dropout, cfg.learning_rate) == (0.0, 0.2, 1e-4)
    assert (cfg.activation, cfg.batch_size, cfg.num_dense) == ("selu", 64, 128)
    assert cfg.batch_norm is False and cfg.data_augment is False


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dropout: 0.4\nbatch_norm: true\nkernel_size: [3, 5, 5, 7, 7]\n")
    cfg = RunConfig.load(path, ["dropout=0.0", "filt_org=32,64,128,256,512", "activation=elu"])
    assert cfg.dropout == 0.0
    assert cfg.batch_norm is True
    assert cfg.kernel_size == [3, 5, 5, 7, 7]
    assert cfg.filt_org == [32, 64, 128, 256, 512]
    assert cfg.activation == "elu"


@pytest.mark.parametrize("spelling", ["true", "True", "TRUE", "yes", "1", True])
def test_boolean_spellings_all_switch_batch_norm_on(spelling):
    # The original notebooks compared against 'True' while sweeps sent 'true': batch norm never ran.
    assert RunConfig.from_dict({"batch_norm": spelling}).batch_norm is True


def test_seed_tuple_kernel_spelling_and_scalar_kernel():
    assert RunConfig.from_dict({"kernel_size": [[3, 3], [5, 5], [5, 5], [7, 7], [7, 7]]}).kernel_size == [3, 5, 5, 7, 7]
    assert RunConfig.from_dict({"kernel_size": 5}).kernel_size == [5] * 5


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("dropout=1.5", "key 'dropout' = 1.5"),
        ("dropout=abc", "key 'dropout' = 'abc'"),
        ("batch_norm=maybe", "true or false"),
        ("kernel_size=[3,3]", "list of 5"),
        ("filt_org=[32,0,32,32,32]", "positive"),
        ("activation=sigmoidal", "allowed: relu"),
        ("model=vgg16", "allowed: scratch"),
        ("epochs=0", "key 'epochs'"),
        ("epochs=2.5", "expected an integer"),
        ("learning_rate=0", "0 < learning_rate"),
        ("image_size=16", "needs image_size >= 32"),
        ("weight_decay=-1", "weight_decay >= 0"),
        ("trainable_layers=-3", "trainable_layers"),
        ("unknown_key=1", "unknown key 'unknown_key'"),
        ("novalue", "expected key=value"),
    ],
)
def test_bad_values_give_one_line_errors_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        RunConfig.load(None, [override])
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_several_bad_keys_report_unknown_keys_first_then_the_first_given():
    with pytest.raises(ConfigError, match="unknown key 'dropuot'"):
        RunConfig.from_dict({"epochs": 0, "dropuot": 0.2})
    with pytest.raises(ConfigError, match="key 'epochs' = 0 is invalid"):
        RunConfig.from_dict({"epochs": 0, "dropout": 5})
    with pytest.raises(ConfigError, match="key 'dropout' = 5.0 is invalid"):
        RunConfig.from_dict({"dropout": 5, "epochs": 0})


@pytest.mark.parametrize("value", [float("nan"), "nan"])
def test_nan_is_not_a_weight_decay(value):
    with pytest.raises(ConfigError, match="key 'weight_decay' = nan is invalid; allowed: weight_decay >= 0"):
        RunConfig.from_dict({"weight_decay": value})


def test_a_config_is_valid_by_construction_and_stays_so():
    # Made directly, a RunConfig reads the same spellings and refuses the same values as from a file.
    assert RunConfig(batch_norm="yes", kernel_size="3,5,5,7,7").kernel_size == [3, 5, 5, 7, 7]
    with pytest.raises(ValueError, match="needs image_size >= 32"):
        RunConfig(image_size=16)
    cfg = RunConfig()
    with pytest.raises(AttributeError):
        cfg.dropout = 5  # frozen: change a copy with replace(), which checks the result
    with pytest.raises(ConfigError, match="key 'dropout' = 5.0 is invalid"):
        cfg.replace(dropout=5)
    assert cfg.replace(epochs="3") == RunConfig(epochs=3) != cfg


def test_json_schema_lists_choices_bounds_and_defaults():
    props = RunConfig.json_schema()["properties"]
    assert props["model"]["enum"][0] == "scratch" and props["activation"]["default"] == "selu"
    assert (props["dropout"]["minimum"], props["dropout"]["exclusiveMaximum"]) == (0, 1)
    assert props["image_size"]["type"] == "integer" and props["image_size"]["maximum"] == 1024


def test_yaml_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("dropout: [0.2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML at line"):
        RunConfig.load(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        RunConfig.load(listy)
    with pytest.raises(ConfigError, match="missing.yaml: file not found"):
        RunConfig.load(tmp_path / "missing.yaml")


def test_save_round_trip(tmp_path):
    cfg = RunConfig.load(None, ["batch_norm=true", "kernel_size=[3,5,7,9,11]", "weights=/x/y.h5"])
    cfg.save(tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["kernel_size"] == [3, 5, 7, 9, 11]
    assert RunConfig.load(tmp_path / "config.yaml") == cfg
    assert not list(tmp_path.glob(".*tmp"))


def test_parse_overrides_reads_yaml_scalars():
    assert parse_overrides(["a=1", "b=0.5", "c=true", "d=[1,2]", "e=text"]) == {
        "a": 1, "b": 0.5, "c": True, "d": [1, 2], "e": "text"
    }


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "train"
    files = sorted(root.glob("*.yaml"))
    assert files
    for path in files:
        RunConfig.load(path)
