"""The local backend's hyperband pruner against W&B's own engine (`sweeps` 0.2.0, `hyperband_stop_runs`).

Both get the same sets of learning curves and must stop the same running runs. Our side is a real
Optuna study: finished, pruned, failed and waiting trials are added with `create_trial`, running
ones are asked for and report their epochs (step = 1-based epoch, as our agent reports them).
The engine's side is a list of `SweepRun`s whose history rows are the same epochs in order.
"""

import math
import random
import time
import warnings

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from inat.sweep.hyperband import WandbHyperbandPruner
from inat.sweep.space import make_pruner
from inat.sweep.spec import load_spec

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pydantic 2 warns about the engine's v1-style model config
    from sweeps.hyperband_stopping import hyperband_stop_runs
    from sweeps.run import RunState, SweepRun

optuna.logging.set_verbosity(optuna.logging.ERROR)

N_SETS = 1000
# How W&B would hold each of our trial states. Only `running` matters to the engine (it decides for
# running runs and takes every run's values for the thresholds), so each other state is drawn from
# the W&B states it could be, to show that the choice changes nothing.
WANDB_STATES = {
    TrialState.COMPLETE: [RunState.finished],
    TrialState.PRUNED: [RunState.killed, RunState.finished],  # stopped by the sweep
    TrialState.FAIL: [RunState.failed, RunState.crashed],
    TrialState.RUNNING: [RunState.running],
    TrialState.WAITING: [RunState.pending],
}


def random_set(seed: int) -> dict:
    """One sweep: a config and 2-12 runs with curves of different lengths, ties, gaps, NaN and inf."""
    rng = random.Random(seed)
    goal = rng.choice(["maximize", "minimize"])
    eta = rng.choice([2, 3, 4])
    et = {"type": "hyperband"}
    if rng.random() < 0.5:
        et["min_iter"] = rng.randint(1, 4)
        if rng.random() < 0.3:
            et["s"] = rng.randint(1, 3)  # ignored by the min_iter form
    else:
        et["max_iter"] = rng.randint(eta, 40)
        et["s"] = rng.randint(1, 4)
        if rng.random() < 0.2:
            et["min_iter"] = rng.randint(1, 4)  # ignored: max_iter wins
    if eta != 3 or rng.random() < 0.5:  # else left to the default, 3
        et["eta"] = eta
    if rng.random() < 0.2:
        et["strict"] = True  # dropped by the engine
    odd = rng.random() < 0.3  # sets with NaN, inf and missing epochs
    runs = []
    for i in range(rng.randint(2, 12)):
        state = TrialState.RUNNING if i == 0 else rng.choice(
            [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING, TrialState.RUNNING,
             TrialState.PRUNED, TrialState.FAIL, TrialState.WAITING])
        length = 0 if state == TrialState.WAITING else rng.randint(0, 30)
        start, slope = rng.random(), rng.uniform(-0.02, 0.05)
        curve = {}
        for epoch in range(1, length + 1):
            if odd and rng.random() < 0.1:
                continue  # the epoch logged no value
            value = round(start + slope * epoch + rng.gauss(0, 0.03), 2)  # 2 decimals: ties happen
            if odd and rng.random() < 0.1:
                value = rng.choice([math.nan, math.inf, -math.inf])
            curve[epoch] = value
        runs.append({"name": f"r{i}", "state": state, "curve": curve,
                     "wandb_state": rng.choice(WANDB_STATES[state])})
    metric = "val_accuracy" if goal == "maximize" else "val_loss"
    return {"goal": goal, "metric": metric, "et": et, "runs": runs}


def optuna_stops(case: dict, pruner) -> dict[str, bool]:
    """The decision of `pruner` for each running trial of a real in-memory study."""
    study = optuna.create_study(direction=case["goal"], pruner=pruner, study_name="oracle")
    running, waiting = {}, []
    for run in case["runs"]:
        if run["state"] == TrialState.RUNNING:
            trial = study.ask()
            for step, value in run["curve"].items():
                trial.report(value, step)
            running[run["name"]] = trial
        elif run["state"] == TrialState.WAITING:
            waiting.append(run)  # added last, or ask() would hand it out as a running trial
        else:
            best = [v for v in run["curve"].values() if math.isfinite(v)]
            value = (max if case["goal"] == "maximize" else min)(best, default=0.0)
            study.add_trial(create_trial(state=run["state"], intermediate_values=run["curve"],
                                         value=value if run["state"] == TrialState.COMPLETE else None))
    for _ in waiting:
        study.add_trial(create_trial(state=TrialState.WAITING))
    return {name: trial.should_prune() for name, trial in running.items()}


def wandb_stops(case: dict) -> dict[str, bool]:
    """The engine's decision for each running run. History rows are the epochs in order; an epoch
    without a value is a row without the metric."""
    metric = case["metric"]
    runs = []
    for run in case["runs"]:
        length = max(run["curve"], default=0)
        rows = [{"epoch": e, **({metric: run["curve"][e]} if e in run["curve"] else {})} for e in range(1, length + 1)]
        # Aliases: under pydantic 2 `history=` is silently dropped.
        runs.append(SweepRun(name=run["name"], state=run["wandb_state"], sampledHistory=rows,
                             summaryMetrics={}))
    config = {"method": "random", "metric": {"name": metric, "goal": case["goal"]},
              "early_terminate": dict(case["et"]), "parameters": {"x": {"values": [1]}}}
    stopped = {r.name for r in hyperband_stop_runs(runs, config)}
    return {r.name: r.name in stopped for r in runs if r.state == RunState.running}


def test_same_stop_decisions_as_wandbs_engine_on_random_sweeps():
    start = time.monotonic()
    decisions = stops = 0
    seen = set()
    for seed in range(N_SETS):
        case = random_set(seed)
        ours, theirs = optuna_stops(case, WandbHyperbandPruner(case["et"])), wandb_stops(case)
        assert ours == theirs, f"set {seed}: {case}"
        decisions += len(ours)
        stops += sum(ours.values())
        seen.add((case["goal"], "max_iter" in case["et"], case["et"].get("eta", 3)))
    # The sets exercise both answers, both goals, both forms and every eta.
    assert decisions > 2000 and 0.2 < stops / decisions < 0.8, (decisions, stops)
    assert len(seen) == 2 * 2 * 3
    assert time.monotonic() - start < 20


def test_the_oracle_catches_optunas_stock_hyperband_pruner():
    """Optuna's HyperbandPruner (brackets, successive halving) is not W&B's rule: the oracle says so."""
    differ = []
    for seed in range(100):
        case = random_set(seed)
        et = case["et"]
        if "max_iter" in et:
            continue
        stock = optuna.pruners.HyperbandPruner(min_resource=et["min_iter"], max_resource=30,
                                               reduction_factor=et.get("eta", 3))
        if optuna_stops(case, stock) != wandb_stops(case):
            differ.append(seed)
    assert len(differ) >= 5, differ


# ---- hand-written cases -------------------------------------------------------------------------------


def curves_case(goal, et, runs):
    return {"goal": goal, "metric": "val_accuracy" if goal == "maximize" else "val_loss", "et": et,
            "runs": [{"name": n, "state": s, "curve": dict(enumerate(c, start=1)),
                      "wandb_state": WANDB_STATES[s][0]} for n, s, c in runs]}


def both(case):
    ours, theirs = optuna_stops(case, WandbHyperbandPruner(case["et"])), wandb_stops(case)
    assert ours == theirs
    return ours


def test_the_engines_own_example(tmp_path):
    # max_iter 5, eta 2, s 2: bands int(5/2) = 2 and int(5/4) = 1, sorted [1, 2]. Minimize.
    # Band 1 (2nd epoch) of all five runs: 9, 10, 8, 7, 6 -> sorted [6, 7, 8, 9, 10], index int(5/2) = 2: 8.
    # Band 2 (3rd epoch) of the three runs that have one: 8, 7, 6 -> index int(3/2) = 1: 7.
    # b (2 epochs) is judged at band 1: best 10 > 8, stopped. c and d (3 epochs) at band 2:
    # c's best 8 > 7, stopped; d's best 7 is not above 7, kept.
    path = tmp_path / "s.yaml"
    path.write_text("method: grid\nmetric: {name: val_loss, goal: minimize}\n"
                    "early_terminate: {type: hyperband, max_iter: 5, eta: 2, s: 2}\n"
                    "parameters:\n  dropout: {values: [0.1, 0.2]}\n")
    spec = load_spec(path)
    case = curves_case("minimize", spec.early_terminate, [
        ("a", TrialState.COMPLETE, [10, 9]), ("b", TrialState.RUNNING, [10, 10]),
        ("c", TrialState.RUNNING, [10, 8, 8]), ("d", TrialState.RUNNING, [10, 7, 7]),
        ("e", TrialState.COMPLETE, [10, 6, 6])])
    assert optuna_stops(case, make_pruner(spec, epochs=5)) == {"b": True, "c": True, "d": False}
    assert both(case) == {"b": True, "c": True, "d": False}


def test_band_is_a_0_based_history_index_so_judging_starts_one_epoch_later():
    # min_iter 3, eta 3: bands 3, 9, ... Band 3 is history index 3, the 4th epoch. Maximize (values negated).
    # After 3 epochs the running run is not judged at all, however bad.
    # After 4 epochs: the values at epoch 4 are 0.9 (finished) and 0.1 (running) -> negated and sorted
    # [-0.9, -0.1], index int(2/3) = 0: threshold -0.9. The running run's best is 0.2 -> -0.2 > -0.9: stopped.
    finished = ("f", TrialState.COMPLETE, [0.6, 0.7, 0.8, 0.9, 0.9])
    three = curves_case("maximize", {"type": "hyperband", "min_iter": 3}, [
        finished, ("r", TrialState.RUNNING, [0.1, 0.2, 0.1])])
    assert both(three) == {"r": False}
    four = curves_case("maximize", {"type": "hyperband", "min_iter": 3}, [
        finished, ("r", TrialState.RUNNING, [0.1, 0.2, 0.1, 0.1])])
    assert both(four) == {"r": True}


def test_its_best_so_far_against_values_at_the_band():
    # min_iter 1, eta 2, minimize: bands 1, 2, 4, 8, ... With 3 epochs, r is judged at band 2 (3rd epoch).
    # Values at the 3rd epoch: 0.5 (f), 0.9 (r) -> sorted [0.5, 0.9], index int(2/2) = 1: threshold 0.9.
    # r's best so far is 0.4 (its 1st epoch), not above 0.9: kept, though its value at the band is the worst.
    case = curves_case("minimize", {"type": "hyperband", "min_iter": 1, "eta": 2}, [
        ("f", TrialState.COMPLETE, [0.6, 0.55, 0.5]), ("r", TrialState.RUNNING, [0.4, 0.8, 0.9])])
    assert both(case) == {"r": False}


def test_nan_is_dropped_and_shifts_later_epochs_down():
    # min_iter 2, eta 2, maximize: bands 2, 4, ... r logged NaN at epoch 2, so its history is
    # [0.3, 0.35, 0.2] (epochs 1, 3, 4): length 3, judged at band 2 = its epoch-4 value, not epoch 3's.
    # Band 2 values: p (pruned, still counts) 0.5, f 0.6, r 0.2 -> negated, sorted [-0.6, -0.5, -0.2],
    # index int(3/2) = 1: -0.5. r's best 0.35 -> -0.35 > -0.5: stopped.
    case = curves_case("maximize", {"type": "hyperband", "min_iter": 2, "eta": 2}, [
        ("p", TrialState.PRUNED, [0.1, 0.2, 0.5]), ("f", TrialState.COMPLETE, [0.3, 0.4, 0.6, 0.7]),
        ("r", TrialState.RUNNING, [0.3, math.nan, 0.35, 0.2])])
    assert both(case) == {"r": True}
    # Without p's value at band 2 the threshold is [-0.6, -0.2][int(2/2) = 1] = -0.2 and r is kept:
    # the pruned trial's values count.
    case["runs"] = case["runs"][1:]
    assert both(case) == {"r": False}


def test_failed_trials_count_and_only_running_ones_are_judged():
    # min_iter 1, eta 3, minimize: band 1 = 2nd epoch. Values there: x (failed) 0.1, y (failed) 0.2,
    # r 0.5 -> sorted [0.1, 0.2, 0.5], index int(3/3) = 1: 0.2. r's best 0.5 > 0.2: stopped.
    # A finished trial is never judged by the pruner.
    case = curves_case("minimize", {"type": "hyperband", "min_iter": 1}, [
        ("x", TrialState.FAIL, [0.3, 0.1]), ("y", TrialState.FAIL, [0.3, 0.2]),
        ("r", TrialState.RUNNING, [0.6, 0.5])])
    assert both(case) == {"r": True}
    study = optuna.create_study(pruner=WandbHyperbandPruner(case["et"]))
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=9.0, intermediate_values={1: 9.0, 2: 9.0}))
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.1, intermediate_values={1: 0.1, 2: 0.1}))
    assert not study.pruner.prune(study, study.trials[0])


def test_a_run_handed_on_after_a_requeue_counts_once():
    # A requeued agent's killed trial (FAIL, epochs 1-4 of run k) is resumed by a new trial that
    # re-reported those epochs; W&B sees run k once. min_iter 1, eta 3, minimize; r (4 epochs) is
    # judged at band 3 (its 4th epoch). Once: values there a 0.8, k 0.3, r 0.6 -> sorted index
    # int(3/3) = 1: 0.6; r's best 0.6 is not above it: r goes on. Were k's killed copy counted too,
    # [0.3, 0.3, 0.6, 0.8] -> index int(4/3) = 1: 0.3, and r would be stopped.
    curve_a, curve_k, curve_r = [0.9, 0.85, 0.82, 0.8], [0.9, 0.9, 0.9, 0.3, 0.3], [0.9, 0.8, 0.7, 0.6]
    case = curves_case("minimize", {"type": "hyperband", "min_iter": 1, "eta": 3}, [
        ("a", TrialState.COMPLETE, curve_a), ("k", TrialState.RUNNING, curve_k),
        ("r", TrialState.RUNNING, curve_r)])
    engine = wandb_stops(case)  # run k once (still running after its requeue)
    assert engine == {"k": False, "r": False}

    study = optuna.create_study(pruner=WandbHyperbandPruner(case["et"]))
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.8,
                                 intermediate_values=dict(enumerate(curve_a, start=1))))
    study.add_trial(create_trial(state=TrialState.FAIL, intermediate_values=dict(enumerate(curve_k[:4], start=1)),
                                 user_attrs={"error": "superseded"}))
    study.enqueue_trial({}, user_attrs={"resumes": 1, "run_dir": "0001"})
    k = study.ask()
    assert k.user_attrs["resumes"] == 1
    for step, value in enumerate(curve_k, start=1):
        k.report(value, step)
    r = study.ask()
    for step, value in enumerate(curve_r, start=1):
        r.report(value, step)
    assert r.should_prune() is engine["r"]
    assert k.should_prune() is engine["k"]


@pytest.mark.parametrize("et, expected", [
    ({"max_iter": 27, "s": 2}, [3, 9]),
    ({"max_iter": 10, "s": 3, "eta": 3}, [1, 3]),  # 3.33 -> 3, 1.11 -> 1, 0.37 < 1 stops
    ({"max_iter": 27, "s": 2, "min_iter": 5}, [3, 9]),  # max_iter wins
    ({"min_iter": 2, "eta": 2, "s": 1}, [2 * 2**k for k in range(100)]),  # s plays no part
])
def test_bands(et, expected):
    assert WandbHyperbandPruner({"type": "hyperband", **et}).bands == expected
