"""Training and evaluation throughput on one accelerator, with Keras on JAX, and no TensorFlow.

    KERAS_BACKEND=jax python benchmarks/gpu_throughput.py [--sizes 128,224] [--partb resnet50]
        [--precisions float32,mixed_bfloat16] [--n 8192] [--steps 60] [--out FILE]

No dataset either: N synthetic uint8 images are written in the decoded-image cache's layout (one
memory-mapped .npy array, `inat.data.cache`) and read by the loader every non-TensorFlow run uses
(`inat.data.loader.ArrayBatches`, worker threads, augmentation in keras.ops). Measured for the Part A
best config (configs/train/default.yaml) at each size and for one Part B base (random weights) at its
own input size, each in every precision, XLA on (JAX always compiles):

  train_img_s       images/s over `--steps` timed training steps (after a warm-up epoch compiles)
  eval_img_s        images/s of model.evaluate over the same number of batches (after one compiles)
  input_stall       share of the timed training wall time spent waiting for the next batch
                    (between one step's end and the next one's start, where the loader's queue is empty)
  loader_img_s      the loader alone: images/s it hands out with the same workers, no model
  peak_mem_bytes    the device's peak bytes in use (JAX memory_stats; null on CPU)
  gpu_util_pct      mean GPU utilisation sampled by `nvidia-smi -lms 100` during the timed steps
                    (null where there is no nvidia-smi)

One JSON object on stdout (and in --out): the device, the versions, one row per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="128,224", help="Part A input sizes (comma-separated)")
    ap.add_argument("--partb", default="resnet50", help="Part B base, or 'none'")
    ap.add_argument("--precisions", default="float32,mixed_bfloat16")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--n", type=int, default=8192, help="synthetic images per size")
    ap.add_argument("--steps", type=int, default=60, help="timed training steps per measurement")
    ap.add_argument("--filters", help="override Part A's filt_org, e.g. 8,8,8,8,8 (for a quick check)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import keras

    work = Path(tempfile.mkdtemp(prefix="inat-gpu-bench-"))
    try:
        rows = [measure(args, work, model, size, precision)
                for model, size in plan(args) for precision in args.precisions.split(",")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"device": device_name(), "backend": keras.backend.backend(), "versions": versions(),
              "batch_size": args.batch_size, "steps": args.steps, "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def plan(args) -> list[tuple[str, int]]:
    from inat.models.transfer import BASES

    runs = [("scratch", int(s)) for s in args.sizes.split(",") if s]
    if args.partb != "none":
        runs.append((args.partb, BASES[args.partb][1]))
    return runs


def synthetic_cache(work: Path, n: int, size: int):
    """N random uint8 images, memory-mapped as a cache's images-<id>.npy, and random labels."""
    import numpy as np

    path = work / f"{size}px" / "images-bench.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(size)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    for i in range(0, n, 512):
        arr[i : i + 512] = rng.integers(0, 256, arr[i : i + 512].shape, dtype=np.uint8)
    arr.flush()
    del arr
    return np.load(path, mmap_mode="r"), rng.integers(0, 10, n).astype(np.int32)


def measure(args, work: Path, model_name: str, size: int, precision: str) -> dict:
    import keras
    import numpy as np

    from inat.config import RunConfig
    from inat.data.loader import ArrayBatches
    from inat.models.common import compile_model, make_model

    sets = [f"model={model_name}", f"batch_size={args.batch_size}"]
    sets += [f"image_size={size}"] if model_name == "scratch" else ["trainable_layers=20", "weights=none"]
    if args.filters and model_name == "scratch":
        sets.append(f"filt_org=[{args.filters}]")
    cfg = RunConfig.load(REPO / "configs" / "train" / "default.yaml", sets)
    images, labels = synthetic_cache(work, args.n, size)

    keras.config.set_dtype_policy(precision)
    keras.utils.clear_session()
    model = make_model(cfg, 10)
    compile_model(model, cfg)
    batches = lambda: ArrayBatches(images, np.arange(len(labels)), labels, args.batch_size,  # noqa: E731
                                   shuffle=True, augment=cfg.data_augment, seed=0)
    steps = min(args.steps, len(batches()))
    model.fit(batches(), epochs=1, steps_per_epoch=min(3, steps), verbose=0)  # compile
    clock = StepClock()
    sampler = GpuSampler()
    with sampler:
        t0 = time.perf_counter()
        model.fit(batches(), epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[clock])
        _sync(model)
        train_s = time.perf_counter() - t0
    model.evaluate(batches(), steps=1, verbose=0)  # compile
    t0 = time.perf_counter()
    model.evaluate(batches(), steps=steps, verbose=0)
    eval_s = time.perf_counter() - t0
    ds, t0 = batches(), time.perf_counter()
    for i in range(steps):
        np.asarray(ds[i][0][:1])  # the batch is ready (augmentation ran) when a pixel can be read
    loader_s = time.perf_counter() - t0
    keras.config.set_dtype_policy("float32")
    seen = steps * args.batch_size
    return {
        "model": model_name, "image_size": size, "precision": precision,
        "train_img_s": round(seen / train_s, 1), "eval_img_s": round(seen / eval_s, 1),
        "input_stall": round(clock.waiting / train_s, 4), "loader_img_s": round(seen / loader_s, 1),
        "peak_mem_bytes": peak_memory(), "gpu_util_pct": sampler.mean(),
    }  # fmt: skip


class StepClock:
    """A Keras callback adding up the time between one step's end and the next step's start: the
    trainer is then fetching the next batch from the loader."""

    def __new__(cls):
        import keras

        class Clock(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.waiting, self._end = 0.0, None

            def on_train_batch_begin(self, batch, logs=None):
                if self._end is not None:
                    self.waiting += time.perf_counter() - self._end

            def on_train_batch_end(self, batch, logs=None):
                self._end = time.perf_counter()

        return Clock()


def _sync(model) -> None:
    """Wait for the device: JAX dispatches asynchronously, so the last steps may still be running."""
    import numpy as np

    np.asarray(model.trainable_variables[0].value)


class GpuSampler:
    """nvidia-smi's utilisation, sampled every 100 ms while the block runs (none without nvidia-smi)."""

    def __init__(self):
        self.samples: list[float] = []
        self._proc = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE, text=True)  # fmt: skip
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self):
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.split(",")[0]))
            except ValueError:
                continue

    def __exit__(self, *exc):
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)

    def mean(self):
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def peak_memory():
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def device_name() -> str:
    import jax

    dev = jax.devices()[0]
    return f"{dev.platform}: {getattr(dev, 'device_kind', '')}".strip()


def versions() -> dict:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for dist in ("keras", "jax", "jaxlib", "numpy"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


if __name__ == "__main__":
    main()
