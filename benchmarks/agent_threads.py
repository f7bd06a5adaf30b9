"""Two sweep agents sharing a machine's CPUs, with and without the per-agent thread limit.

    python benchmarks/agent_threads.py [--rounds 2] [--trials 2] [--epochs 2] [--image-size 64]
        [--per-class 100] [--out FILE]

A job that runs K agents gives each `cpus / K` threads ($INAT_THREADS, `jobs.gpus`); without it,
each TensorFlow process sizes its pools to every core, and K of them oversubscribe the node. This
starts 2 agents on one local sweep exactly as such a job does (`jobs.agents.start_agents`), each
running `--trials` trials of a small Part A config on demo data, once with the limit (this
machine's CPUs / 2 each) and once without, alternating the order over `--rounds`, and reports
trials per hour for each and the ratio limited / unlimited per round. One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPEC = """method: random
metric: {name: val_accuracy, goal: maximize}
parameters:
  learning_rate: {values: [0.003, 0.001]}
  dropout: {values: [0.0, 0.2]}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--trials", type=int, default=2, help="trials per agent per measurement")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--per-class", type=int, default=100, help="demo training images per class")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from inat.data.demo import make_demo_data
    from jobs.gpus import job_cpus

    cpus = job_cpus()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="inat-agent-threads-") as tmp:
        data = make_demo_data(Path(tmp) / "data", n_train_per_class=args.per_class, n_test_per_class=2)
        for r in range(args.rounds):
            order = ("limited", "unlimited") if r % 2 == 0 else ("unlimited", "limited")
            row = {}
            for mode in order:
                threads = str(max(1, cpus // 2)) if mode == "limited" else None
                row[mode] = run_two_agents(args, Path(tmp) / f"r{r}-{mode}", data, threads)
            row["ratio"] = round(row["limited"]["trials_per_hour"] / row["unlimited"]["trials_per_hour"], 3)
            rounds.append(row)
            print(f"round {r}: {json.dumps(row)}", file=sys.stderr)
    ratios = [r["ratio"] for r in rounds]
    result = {"cpus": cpus, "agents": 2, "threads_per_agent_limited": max(1, cpus // 2),
              "trials_per_agent": args.trials, "image_size": args.image_size, "epochs": args.epochs,
              "train_images": args.per_class * 10,
              "rounds": rounds, "ratio_limited_over_unlimited": {
                  "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def run_two_agents(args, scratch: Path, data: Path, threads: str | None) -> dict:
    from inat.sweep import load_sweep
    from jobs import agents
    from jobs.launch import create_sweep

    scratch.mkdir(parents=True)
    (scratch / "sweep.yaml").write_text(SPEC)
    fixed = [f"image_size={args.image_size}", f"epochs={args.epochs}", "batch_size=32", "num_dense=32",
             "filt_org=[16,16,32,32,32]", "activation=relu"]
    sw, _ = create_sweep(scratch / "sweep.yaml", 2, args.trials, "local", data, scratch, fixed, None, 0)
    sw = load_sweep(scratch, sw.id)
    env = {} if threads is None else {"INAT_THREADS": threads}
    os.environ.pop("INAT_THREADS", None)
    os.environ.setdefault("WANDB_MODE", "disabled")
    t0 = time.perf_counter()
    started = agents.start_agents(sw, [agents.agent_id(0), agents.agent_id(1)], [args.trials] * 2, [env, env])
    failed = agents.wait(started, lambda *_: None)
    seconds = time.perf_counter() - t0
    if failed:
        raise SystemExit(f"agents failed: {[a.exit_text() for a in failed]}; logs in {sw.agents_dir}")
    trials = 2 * args.trials
    return {"threads": threads or "TensorFlow's default", "seconds": round(seconds, 1),
            "trials_per_hour": round(trials / seconds * 3600, 1)}


if __name__ == "__main__":
    main()
