"""Training speed of one model on two Keras backends, JAX against TensorFlow, on this machine.

    python benchmarks/backend_speed.py [--image-size 128] [--batch-size 64] [--steps 20] [--rounds 3]

The Part A best config (configs/train/default.yaml) at `--image-size`, trained from the same
in-memory uint8 images through the same loader (`inat.data.loader.ArrayBatches`), so that only the
backend differs. Each measurement is a fresh process (Keras picks its backend at import); the
backends alternate round by round and each round gives one ratio, so that load from other processes
hits both alike. Prints one JSON object: images/s per backend and round, and the median ratio
jax / tensorflow.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--filters", help="override filt_org, e.g. 8,8,8,8,8 (for a quick check)")
    ap.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(measure(args)))
        return

    rounds = []
    for _ in range(args.rounds):
        row = {}
        for backend in BACKENDS:
            cmd = [sys.executable, __file__, "--worker", backend, "--image-size", str(args.image_size),
                   "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
            cmd += ["--filters", args.filters] if args.filters else []
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                sys.exit(f"backend_speed: the {backend} run failed:\n{done.stderr[-3000:]}")
            row[backend] = json.loads(done.stdout.strip().splitlines()[-1])["train_img_s"]
        row["ratio"] = round(row["jax"] / row["tensorflow"], 3)
        rounds.append(row)
    result = {
        "what": "training images/s, Part A best config", "image_size": args.image_size,
        "batch_size": args.batch_size, "steps": args.steps, "cpus": os.cpu_count(), "rounds": rounds,
        "ratio_jax_over_tensorflow": {"median": statistics.median(r["ratio"] for r in rounds),
                                      "min": min(r["ratio"] for r in rounds), "max": max(r["ratio"] for r in rounds)},
    }  # fmt: skip
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def measure(args) -> dict:
    import keras
    import numpy as np

    from inat.config import RunConfig
    from inat.data.loader import ArrayBatches
    from inat.models.common import compile_model, make_model

    sets = [f"image_size={args.image_size}", f"batch_size={args.batch_size}"]
    sets += [f"filt_org=[{args.filters}]"] if args.filters else []
    cfg = RunConfig.load(REPO / "configs" / "train" / "default.yaml", sets)
    n = args.batch_size * (args.steps + 2)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    keras.utils.set_random_seed(0)
    model = make_model(cfg, 10)
    compile_model(model, cfg)
    batches = lambda: ArrayBatches(images, np.arange(n), labels, cfg.batch_size, shuffle=True,  # noqa: E731
                                   augment=cfg.data_augment, seed=0)
    model.fit(batches(), epochs=1, steps_per_epoch=2, verbose=0)  # compile / trace
    t0 = time.perf_counter()
    model.fit(batches(), epochs=1, steps_per_epoch=args.steps, verbose=0)
    np.asarray(model.trainable_variables[0].value)  # wait for the last step (JAX runs asynchronously)
    seconds = time.perf_counter() - t0
    return {"backend": keras.backend.backend(), "train_img_s": round(args.steps * cfg.batch_size / seconds, 1)}


if __name__ == "__main__":
    main()
