"""Does hyperband pay off? The same small sweep with and without it, on a cheap real objective.

A tiny CNN on the flowers5 photos (shared/data/flowers5 beside the repository) at 32 px, run through
the real local backend (Optuna + train()). Prints one JSON object: epochs spent and best
val_accuracy of each arm, and their ratios. The goal is the best within 1 point at <= 50 % of the
epochs.

    python benchmarks/hyperband.py [--trials 32] [--epochs 27] [--min-iter 3] [--eta 3] [--s 2]
                                   [--repeats 1] [--seed 0] [--data DIR] [--out DIR]

Both arms train the very same configs in the same order, so the only difference is the pruning: a
seeded RandomSampler draws `--trials` configs from the space once, and every arm's study gets that
list through `study.enqueue_trial` before its agent starts (and the arm checks afterwards that it
trained exactly that list). Enqueueing makes the configs equal by construction: with TPE in both arms
they would part ways at the first pruned trial (it changes what TPE learns from), and a seeded random
sampler in both would match only while nothing else draws from its generator. The price: the search
does not adapt to results, which is not what is measured here.

The defaults are the shipped sweep files' early_terminate (min_iter 3, eta 3, s 2; W&B's rule then
compares runs at bands 3, 9, 27, ... of their history, i.e. after epochs 4, 10, 28, ...) with enough
epochs that the bands come early in a trial, which is how hyperband is meant to be used. `--repeats N`
launches the hyperband arm N times: the rule has no random brackets, so launches differ only as far
as training itself is not deterministic.

Not a test: minutes of CPU. Accuracy is that of finished trials (what the sweep would pick).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SPACE = """\
method: bayes
metric: {name: val_accuracy, goal: maximize}
parameters:
  learning_rate: {values: [0.01, 0.003, 0.001, 0.0003]}
  dropout: {values: [0.0, 0.3]}
  num_dense: {values: [16, 64]}
  kernel_size: {values: [[3, 3, 3, 3, 3], [5, 5, 3, 3, 3]]}
  activation: {values: [relu, elu]}
"""


def hyperband(args) -> str:
    return f"early_terminate: {{type: hyperband, min_iter: {args.min_iter}, eta: {args.eta}, s: {args.s}}}\n"


def draw_configs(args) -> list[dict]:
    """`--trials` configs (Optuna params) drawn once by a seeded RandomSampler, for every arm."""
    import optuna

    from inat.sweep.space import optuna_space
    from inat.sweep.spec import load_spec

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "space.yaml"
        path.write_text(SPACE)
        space = optuna_space(load_spec(path))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
    return [study.ask(space).params for _ in range(args.trials)]


def run_arm(name: str, spec_text: str, args, scratch: Path, configs: list[dict]) -> dict:
    from inat.sweep import new_sweep, read_trial
    from inat.sweep.local import run_agent
    from inat.sweep.study import create_study, open_study

    spec_path = scratch / f"{name}.yaml"
    spec_path.write_text(spec_text)
    fixed = {"epochs": args.epochs, "image_size": args.image_size, "filt_org": [8, 16, 16, 32, 32],
             "batch_size": 32, "val_fraction": 0.2, "seed": 0}
    sweep, spec = new_sweep(scratch, spec_path, "local", args.data, fixed, seed=args.seed)
    create_study(sweep, spec)
    study = open_study(sweep, spec)
    for params in configs:  # the agent's ask() takes these first, in this order
        study.enqueue_trial(params)
    start = time.perf_counter()
    run_agent(sweep, "bench", count=args.trials)
    seconds = time.perf_counter() - start
    trained = [t.params for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]
    assert trained == configs, f"{name}: the agent did not train the enqueued configs in order"
    rows = [read_trial(d) for d in sorted(sweep.trials_dir.iterdir()) if d.is_dir()]
    finished = [r for r in rows if r["state"] == "finished" and r["best_val_accuracy"] is not None]
    best = max(finished, key=lambda r: r["best_val_accuracy"], default=None)
    return {
        "sweep_dir": str(sweep.dir),
        "trials": len(rows),
        "finished": len(finished),
        "pruned": sum(r["state"] == "pruned" for r in rows),
        "epochs_spent": sum(r["epochs_done"] for r in rows),
        "epochs_per_trial": [r["epochs_done"] for r in rows],
        "best_val_accuracy_per_trial": [r["best_val_accuracy"] for r in rows],
        "best_val_accuracy": best["best_val_accuracy"] if best else None,
        "best_trial": best["trial"] if best else None,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=27)
    parser.add_argument("--min-iter", type=int, default=3)
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--s", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="launches of the hyperband arm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "flowers5")
    parser.add_argument("--out", type=Path, default=None, help="scratch root (default: a temporary directory)")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"hyperband.py: data not found: {args.data} (pass --data)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    scratch = args.out or Path(tempfile.mkdtemp(prefix="hyperband-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)

    configs = draw_configs(args)
    without = run_arm("without", SPACE, args, scratch, configs)
    base = without["best_val_accuracy"]
    arms, verdicts = [], []
    for i in range(args.repeats):
        arm = run_arm(f"with-{i}", SPACE + hyperband(args), args, scratch, configs)
        ratio = arm["epochs_spent"] / without["epochs_spent"]
        best = arm["best_val_accuracy"]
        diff = None if base is None or best is None else round(100 * (best - base), 2)
        arm.update(epoch_ratio=round(ratio, 3), time_ratio=round(arm["seconds"] / without["seconds"], 3),
                   best_difference_points=diff, goal_met=diff is not None and diff >= -1.0 and ratio <= 0.5)
        arms.append(arm)
        verdicts.append(arm["goal_met"])
    print(json.dumps({
        "setup": {"trials": args.trials, "epochs": args.epochs, "seed": args.seed, "image_size": args.image_size,
                  "data": str(args.data), "hyperband": hyperband(args).strip(), "configs": configs},
        "without_hyperband": without,
        "with_hyperband": arms,
        "epoch_ratios": [a["epoch_ratio"] for a in arms],
        "best_difference_points": [a["best_difference_points"] for a in arms],
        "goal_met": f"{sum(verdicts)} of {len(verdicts)}",
    }, indent=2))

if __name__ == "__main__":
    main()
