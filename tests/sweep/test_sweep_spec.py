"""Sweep files: the shipped ones, every W&B parameter form and its Optuna mapping, and the errors."""

import json
import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from conftest import REPO
from inat.config import RunConfig
from inat.errors import ConfigError
from inat.sweep.hyperband import WandbHyperbandPruner
from inat.sweep.space import decode, grid_space, make_pruner, make_sampler, optuna_space
from inat.sweep.spec import load_spec

PART_A = REPO / "configs" / "sweeps" / "sweep_partA.yaml"
PART_B = REPO / "configs" / "sweeps" / "sweep_partB.yaml"


def write(tmp_path, body: str, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(body)
    return path


def spec_with(tmp_path, params: str, head: str = "method: bayes\nmetric: {name: val_accuracy, goal: maximize}\n"):
    return load_spec(write(tmp_path, head + "parameters:\n" + params))


# ---- the shipped files ------------------------------------------------------------------------------


def test_part_a_is_the_assignment_space():
    spec = load_spec(PART_A)
    assert (spec.method, spec.metric, spec.goal) == ("bayes", "val_accuracy", "maximize")
    assert spec.early_terminate == {"type": "hyperband", "min_iter": 3, "s": 2}
    values = {k: p.values for k, p in spec.params.items()}
    assert values["kernel_size"] == [[3, 3, 3, 3, 3], [3, 5, 5, 7, 7], [7, 7, 5, 5, 3], [3, 5, 7, 9, 11]]
    assert values["filt_org"] == [[32, 32, 32, 32, 32], [32, 64, 64, 128, 128], [128, 128, 64, 64, 32],
                                  [32, 64, 128, 256, 512]]
    assert values["weight_decay"] == [0, 0.0005, 0.005]
    assert values["dropout"] == [0, 0.2, 0.4]
    assert values["learning_rate"] == [1e-3, 1e-4]
    assert values["activation"] == ["relu", "elu", "selu"]
    assert values["batch_norm"] == [True, False] and values["data_augment"] == [True, False]
    assert values["num_dense"] == [64, 128, 256, 512]
    assert spec.constants == {"batch_size": 64}


def test_part_b_is_the_assignment_space():
    spec = load_spec(PART_B)
    values = {k: p.values for k, p in spec.params.items()}
    assert values == {
        "model": ["inceptionv3", "inceptionresnetv2", "resnet50", "xception"],
        "trainable_layers": [50, 70, 100], "dropout": [0, 0.2, 0.4], "batch_size": [32, 64],
        "num_dense": [64, 128, 256, 512],
    }
    assert spec.early_terminate["min_iter"] == 3 and spec.early_terminate["s"] == 2


@pytest.mark.parametrize("path", [PART_A, PART_B], ids=["partA", "partB"])
def test_shipped_files_map_to_categoricals_that_round_trip(path):
    spec = load_spec(path)
    space = optuna_space(spec)
    assert set(space) == set(spec.swept) and not set(space) & set(spec.constants)
    for key, dist in space.items():
        assert isinstance(dist, CategoricalDistribution)
        for raw in spec.params[key].values:
            # Every choice survives the trip through Optuna (and its storage, which needs JSON-able
            # scalars) and becomes a value RunConfig accepts.
            stored = dist.to_external_repr(dist.to_internal_repr(raw if not isinstance(raw, list)
                                                                 else json.dumps(raw)))
            assert decode(spec, {key: stored})[key] == raw
            RunConfig.from_dict({key: raw, **({"weights": "none"} if key == "model" else {})})


def test_list_choices_are_json_strings_for_optuna():
    space = optuna_space(load_spec(PART_A))
    assert space["kernel_size"].choices == ("[3, 3, 3, 3, 3]", "[3, 5, 5, 7, 7]", "[7, 7, 5, 5, 3]", "[3, 5, 7, 9, 11]")
    assert space["activation"].choices == ("relu", "elu", "selu")


def test_shipped_hyperband_is_wandbs_rule_with_bands_from_min_iter():
    pruner = make_pruner(load_spec(PART_A), 10)
    assert isinstance(pruner, WandbHyperbandPruner)
    # min_iter 3, eta 3 (default): bands 3, 9, 27, ... (s plays no part in the min_iter form)
    assert pruner.eta == 3 and pruner.bands[:4] == [3, 9, 27, 81] and len(pruner.bands) == 100


# ---- every distribution -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, expected",
    [
        ("dropout: {values: [0.1, 0.3]}", CategoricalDistribution([0.1, 0.3])),
        ("dropout: {distribution: categorical, values: [0.1]}", CategoricalDistribution([0.1])),
        ("num_dense: {distribution: int_uniform, min: 16, max: 64}", IntDistribution(16, 64)),
        ("num_dense: {min: 16, max: 64}", IntDistribution(16, 64)),  # inferred int_uniform
        ("dropout: {distribution: uniform, min: 0.0, max: 0.5}", FloatDistribution(0.0, 0.5)),
        ("dropout: {min: 0.0, max: 0.5}", FloatDistribution(0.0, 0.5)),  # inferred uniform
        ("dropout: {distribution: q_uniform, min: 0.0, max: 0.5, q: 0.1}", FloatDistribution(0.0, 0.5, step=0.1)),
        ("num_dense: {distribution: q_uniform, min: 32, max: 512, q: 32}", IntDistribution(32, 512, step=32)),
        ("learning_rate: {distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-2}",
         FloatDistribution(1e-5, 1e-2, log=True)),
        # log_uniform's bounds are natural logs: exp(-9.21) ~ 1e-4, exp(-4.61) ~ 1e-2
        ("learning_rate: {distribution: log_uniform, min: -9.21, max: -4.61}",
         FloatDistribution(math.exp(-9.21), math.exp(-4.61), log=True)),
        ("learning_rate: {distribution: q_log_uniform_values, min: 1.0e-4, max: 1.0e-2, q: 1.0e-4}",
         FloatDistribution(1e-4, 1e-2, log=True)),
        ("num_dense: {distribution: q_log_uniform_values, min: 16, max: 512, q: 8}", FloatDistribution(16, 512, log=True)),
        ("learning_rate: {distribution: q_log_uniform, min: -9.21, max: -4.61, q: 1.0e-4}",
         FloatDistribution(math.exp(-9.21), math.exp(-4.61), log=True)),
    ],
)
def test_distribution_maps_to_optuna(tmp_path, body, expected):
    spec = spec_with(tmp_path, "  " + body + "\n")
    (key, dist), = optuna_space(spec).items()
    assert dist == expected


def test_constant_is_fixed_not_searched(tmp_path):
    spec = spec_with(tmp_path, "  epochs: {value: 3}\n  seed: {distribution: constant, value: 7}\n"
                               "  dropout: {values: [0.1]}\n")
    assert spec.constants == {"epochs": 3, "seed": 7}
    assert set(optuna_space(spec)) == {"dropout"}


def test_q_log_uniform_rounds_like_wandb(tmp_path):
    spec = spec_with(tmp_path, "  num_dense: {distribution: q_log_uniform_values, min: 16, max: 512, q: 8}\n"
                               "  learning_rate: {distribution: q_log_uniform_values, min: 1.0e-4, max: 1.0e-2, q: 1.0e-4}\n")
    out = decode(spec, {"num_dense": 100.9, "learning_rate": 0.00123})
    assert out["num_dense"] == 104 and isinstance(out["num_dense"], int)
    assert out["learning_rate"] == pytest.approx(0.0012)


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("dropout: {distribution: normal, mu: 0.2, sigma: 0.1}", "no Optuna equivalent"),
        ("dropout: {distribution: q_normal, mu: 0.2, sigma: 0.1, q: 0.1}", "no Optuna equivalent"),
        ("learning_rate: {distribution: log_normal, mu: -7, sigma: 1}", "no Optuna equivalent"),
        ("dropout: {distribution: beta, a: 2, b: 5}", "no Optuna equivalent"),
        ("learning_rate: {distribution: inv_log_uniform_values, min: 10, max: 1000}", "no Optuna equivalent"),
        ("dropout: {values: [0.1, 0.2], probabilities: [0.5, 0.5]}", "probabilities"),
    ],
)
def test_forms_optuna_cannot_express_are_rejected_clearly(tmp_path, body, fragment):
    spec = spec_with(tmp_path, "  " + body + "\n")  # valid W&B: the wandb backend takes it
    with pytest.raises(ConfigError) as err:
        optuna_space(spec)
    assert fragment in str(err.value) and "--backend wandb" in str(err.value)
    assert "parameters." + body.split(":")[0] in str(err.value)


def test_grid_and_samplers(tmp_path):
    spec = spec_with(tmp_path, "  kernel_size: {values: [[3,3,3,3,3], [5,5,5,5,5]]}\n"
                               "  num_dense: {distribution: int_uniform, min: 8, max: 10}\n",
                     head="method: grid\nmetric: {name: val_accuracy, goal: maximize}\n")
    assert grid_space(spec) == {"kernel_size": ["[3, 3, 3, 3, 3]", "[5, 5, 5, 5, 5]"], "num_dense": [8, 9, 10]}
    assert isinstance(make_sampler(spec, 0, "a"), optuna.samplers.GridSampler)
    bayes = load_spec(PART_A)
    assert isinstance(make_sampler(bayes, 0, "agent-0"), optuna.samplers.TPESampler)

    def first_draw(agent):
        study = optuna.create_study(direction="maximize", sampler=make_sampler(bayes, 0, agent))
        return study.ask(optuna_space(bayes)).params

    # Seeded per agent: reproducible, yet agents started together do not draw the same configs.
    assert first_draw("agent-0") == first_draw("agent-0")
    assert first_draw("agent-0") != first_draw("agent-1")


def test_hyperband_from_max_iter(tmp_path):
    spec = load_spec(write(tmp_path, "method: random\nmetric: {name: val_loss, goal: minimize}\n"
                                     "early_terminate: {type: hyperband, max_iter: 27, s: 2, eta: 3}\n"
                                     "parameters:\n  dropout: {values: [0.1]}\n"))
    assert make_pruner(spec, 27).bands == [3, 9]  # 27 / 3^i for i = 1, 2
    assert make_pruner(spec, 5).bands == [3, 9]  # the run's length plays no part
    assert make_sampler(spec, 0).__class__.__name__ == "RandomSampler"


def test_hyperband_without_early_terminate_prunes_nothing(tmp_path):
    spec = spec_with(tmp_path, "  dropout: {values: [0.1]}\n")
    assert isinstance(make_pruner(spec, 10), optuna.pruners.NopPruner)


# ---- validation errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("method: bayes\nparameters:\n  dropuot: {values: [0.1]}\n", ["parameters.dropuot", "unknown parameter"]),
        ("method: hyper\nparameters:\n  dropout: {values: [0.1]}\n", ["method 'hyper'"]),
        ("method: bayes\nparameters:\n  dropout: {distribution: gaussian, min: 0, max: 1}\n",
         ["parameters.dropout", "distribution 'gaussian'"]),
        ("method: bayes\nmetric: {name: val_accuracy, goal: maximise}\nparameters:\n  dropout: {values: [0.1]}\n",
         ["metric.goal 'maximise'"]),
        ("method: bayes\nmetric: {name: val_acc}\nparameters:\n  dropout: {values: [0.1]}\n", ["metric.name 'val_acc'"]),
        ("method: bayes\nparameters:\n  dropout: {values: [0.1, 1.5]}\n", ["parameters.dropout", "1.5"]),
        ("method: bayes\nparameters:\n  dropout: {min: 0.0, max: 2.0}\n", ["parameters.dropout", "2.0"]),
        ("method: bayes\nparameters:\n  activation: {values: [relu, swish]}\n", ["parameters.activation", "swish"]),
        ("method: bayes\nparameters:\n  num_dense: {min: 0.5, max: 64.0}\n", ["parameters.num_dense", "integer"]),
        ("method: bayes\nparameters:\n  dropout: {min: 0.4, max: 0.1}\n", ["parameters.dropout", "below max"]),
        ("method: bayes\nearly_terminate: {type: envelope}\nparameters:\n  dropout: {values: [0.1]}\n",
         ["early_terminate.type 'envelope'"]),
        ("method: bayes\nearly_terminate: {type: hyperband, max_iter: 9}\nparameters:\n  dropout: {values: [0.1]}\n",
         ["needs s"]),
        # W&B's engine uses max_iter (and reads s) even when min_iter is given too
        ("method: bayes\nearly_terminate: {type: hyperband, min_iter: 3, max_iter: 27}\nparameters:\n"
         "  dropout: {values: [0.1]}\n", ["needs s"]),
        ("method: bayes\nearly_terminate: {type: hyperband, max_iter: 2, s: 1}\nparameters:\n"
         "  dropout: {values: [0.1]}\n", ["max_iter 2 is below eta 3"]),
        ("method: bayes\nparameters: {}\n", ["'parameters'"]),
        ("method: bayes\nprogramme: x.py\nparameters:\n  dropout: {values: [0.1]}\n", ["top-level key 'programme'"]),
    ],
)
def test_invalid_sweep_files_give_one_line_naming_file_and_key(tmp_path, text, fragments):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_candidates_are_checked_on_top_of_fixed_values(tmp_path):
    # image_size 16 is fine for a transfer model but not for the scratch CNN (5 max-pools).
    path = write(tmp_path, "method: bayes\nparameters:\n  image_size: {values: [16, 64]}\n")
    with pytest.raises(ConfigError, match="parameters.image_size"):
        load_spec(path)
    load_spec(path, fixed={"model": "resnet50"})


def test_set_cannot_name_a_key_of_the_sweep():
    spec = load_spec(PART_A)
    with pytest.raises(ConfigError, match="'dropout' is set by the sweep file"):
        spec.check_overrides({"dropout": 0.1})
    with pytest.raises(ConfigError, match="'batch_size' is set by the sweep file"):
        spec.check_overrides({"batch_size": 32})
    spec.check_overrides({"epochs": 3, "image_size": 64})


def test_precision_and_xla_are_sweepable(tmp_path):
    spec = spec_with(tmp_path, "  precision: {values: [float32, mixed_bfloat16]}\n"
                               "  jit_compile: {values: [true, false, auto]}\n")
    space = optuna_space(spec)
    assert isinstance(space["precision"], CategoricalDistribution)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        params = decode(spec, study.ask(space).params)
        cfg = RunConfig.from_dict(params)
        seen.add((cfg.precision, cfg.jit_compile))
    assert {p for p, _ in seen} == {"float32", "mixed_bfloat16"} and {j for _, j in seen} == {True, False, "auto"}
    with pytest.raises(ConfigError, match="precision"):
        spec_with(tmp_path, "  precision: {values: [float32, fp8]}\n")
