"""Training throughput with TensorFlow on a GPU: float32 against mixed precision, XLA off and on.

    python benchmarks/gpu_train.py [--sizes 128,224] [--partb resnet50] [--n 4096] [--steps 50]
        [--batch-size 64] [--out FILE]

For a user's GPU node (TensorFlow cannot run on the H200 machine we reach; gpu_throughput.py
measures Keras on JAX there). Synthetic JPEGs in the iNaturalist layout (`inat.data.demo`) are
decoded once into the decoded-image cache (`inat.data.cache_build`), and the batches come from it,
through the tf.data pipeline training uses (`inat.data.dataset_for`, augmentation on as in the
best config). Measured for the Part A best config (configs/train/default.yaml) at each size and for
one Part B base (random weights) at its own input size, in float32 and in the mixed precision
`precision: auto` picks for the GPU (bfloat16 from compute capability 8.0, else float16), each with
XLA off and on:

  train_img_s      images/s over `--steps` timed training steps (after a warm-up that compiles)
  input_stall      share of the timed wall time the trainer waited for the next batch
  peak_mem_bytes   the GPU's peak bytes in use during the measurement (TensorFlow's memory info)
  gpu_util_pct     mean GPU utilisation from `nvidia-smi -lms 100` (null without nvidia-smi)

Without a GPU it runs small on the CPU (32 px, few images and steps; mixed = bfloat16) and says so
in `note`: the figures are then a check that the script works, not a measurement. One JSON object
on stdout (and in --out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from gpu_throughput import GpuSampler, StepClock, plan  # noqa: E402  (the same clocks, the same plan)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="128,224", help="Part A input sizes (comma-separated)")
    ap.add_argument("--partb", default="resnet50", help="Part B base, or 'none'")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n", type=int, default=4096, help="synthetic images")
    ap.add_argument("--steps", type=int, default=50, help="timed training steps per measurement")
    ap.add_argument("--filters", help="override Part A's filt_org, e.g. 8,8,8,8,8 (for a quick check)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import keras
    import tensorflow as tf

    from inat import devices

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)  # peak memory is then what training used
    note = None
    if not gpus:
        note = "no GPU: ran small on the CPU (32 px, few images); a check of the script, not a measurement"
        args.sizes, args.n, args.steps = "32", min(args.n, 200), min(args.steps, 3)
    capability = None
    if gpus:
        found = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
        capability = ".".join(map(str, found)) if found else None
    mixed = devices.resolve_precision("auto", "gpu", capability) if gpus else "mixed_bfloat16"
    precisions = ["float32"] + ([mixed] if mixed != "float32" else [])

    with tempfile.TemporaryDirectory(prefix="inat-gpu-train-") as tmp:
        rows = []
        for model_name, size in plan(args):
            splits, cache = synthetic_cache(Path(tmp), args.n, size)
            rows += [measure(args, splits, cache, model_name, size, precision, jit)
                     for precision in precisions for jit in (False, True)]
    result = {"device": gpus[0].name if gpus else "cpu", "compute_capability": capability,
              "gpu_name": (tf.config.experimental.get_device_details(gpus[0]).get("device_name") if gpus else None),
              "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
              "batch_size": args.batch_size, "steps": args.steps, "note": note, "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def synthetic_cache(work: Path, n: int, size: int):
    """N synthetic JPEGs in the iNaturalist layout, decoded once into the cache at `size` px."""
    from inat import data
    from inat.data.cache import find_cache
    from inat.data.cache_build import build_cache
    from inat.data.demo import make_demo_data

    root = work / "data"
    if not root.exists():
        make_demo_data(root, n_train_per_class=max(2, n // 10), n_test_per_class=1, size=max(size, 64))
    splits = data.discover(root, seed=0, val_fraction=0.1)
    build_cache(root, size, work / "cache")
    return splits, find_cache(splits, size, work / "cache")


def measure(args, splits, cache, model_name: str, size: int, precision: str, jit: bool) -> dict:
    import keras
    import tensorflow as tf

    from inat.config import RunConfig
    from inat.data import dataset_for
    from inat.models.common import compile_model, make_model

    sets = [f"model={model_name}", f"batch_size={args.batch_size}", "data_augment=true"]
    sets += [f"image_size={size}"] if model_name == "scratch" else ["trainable_layers=20", "weights=none"]
    if args.filters and model_name == "scratch":
        sets.append(f"filt_org=[{args.filters}]")
    cfg = RunConfig.load(HERE.parent / "configs" / "train" / "default.yaml", sets)
    keras.utils.clear_session()
    gpu = bool(tf.config.list_physical_devices("GPU"))
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    keras.config.set_dtype_policy(precision)
    try:
        model = make_model(cfg, len(splits.classes))
        compile_model(model, cfg, jit_compile=jit)
    finally:
        keras.config.set_dtype_policy("float32")

    def batches():
        return dataset_for(splits, "train", size, cfg.batch_size, training=True, augment=True, cache=cache).repeat()

    model.fit(batches(), epochs=1, steps_per_epoch=3, verbose=0)  # compiles (XLA: the first steps)
    clock, sampler = StepClock(), GpuSampler()
    with sampler:
        t0 = time.perf_counter()
        model.fit(batches(), epochs=1, steps_per_epoch=args.steps, verbose=0, callbacks=[clock])
        train_s = time.perf_counter() - t0
    seen = args.steps * args.batch_size
    return {
        "model": model_name, "image_size": size, "precision": precision, "jit_compile": jit,
        "train_img_s": round(seen / train_s, 1), "input_stall": round(clock.waiting / train_s, 4),
        "peak_mem_bytes": tf.config.experimental.get_memory_info("GPU:0")["peak"] if gpu else None,
        "gpu_util_pct": sampler.mean(),
    }  # fmt: skip


if __name__ == "__main__":
    main()
