"""Input-pipeline benchmark: our tf.data pipelines (cached, uncached, augmented) against the seed's
tf_keras ImageDataGenerator.flow_from_directory, and model.fit from the cache against in-memory arrays.

    python benchmarks/input_pipeline.py [--n 2000] [--image-size 128] [--repeats 5] [--workdir DIR]

Everything is measured in ONE run on the SAME files, the methods interleaved round by round, and
each ratio is taken within a round, so that load from other processes on a shared machine hits
numerator and denominator alike; the JSON gives the median ratio and its range over the rounds.
The page cache is warmed before timing and the first batches of every measurement are discarded.

tf_keras (for ImageDataGenerator) and scipy (which its transforms need) are not project
dependencies: on first use they are installed with `pip install --no-deps --target` into
$INAT_BENCH_DEPS (default ~/.cache/inat-jobs/bench-deps), never into the project's environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLASSES = tuple(f"class{i}" for i in range(10))
TARGETS = {"p1_cached": 10.0, "p1_uncached": 1.5, "p1_augmented": 5.0, "p2_fit_ratio": 0.95}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="synthetic 800x600 JPEGs (default 2000)")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds of the input measurements")
    ap.add_argument("--fit-pairs", type=int, default=20, help="alternating short-epoch pairs for model.fit (p2)")
    ap.add_argument("--fit-steps", type=int, default=10, help="batches per timed model.fit epoch (p2)")
    ap.add_argument("--skip-fit", action="store_true", help="input pipelines only (no p2)")
    ap.add_argument("--workdir", type=Path, help="keep images and cache here and reuse them (default: a temp dir)")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()

    ensure_bench_deps()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="inat-bench-"))
    try:
        result = run(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def run(args, work: Path) -> dict:
    import numpy as np
    import tensorflow as tf

    from inat import data
    from inat.data import cache, cache_build
    from inat.data.demo import make_synthetic_jpegs

    root = work / "data"
    t0 = time.perf_counter()
    if len(list((root / "train").rglob("*.jpg"))) != args.n:
        shutil.rmtree(root, ignore_errors=True)
        paths = make_synthetic_jpegs(root / "train", args.n, 800, 600, classes=CLASSES, seed=0)
        for name in CLASSES:  # discover() wants a val/ (test) folder: one hard link per class
            first = next(p for p in paths if p.parent.name == name)
            (root / "val" / name).mkdir(parents=True)
            os.link(first, root / "val" / name / first.name)
        log(f"wrote {args.n} JPEGs in {time.perf_counter() - t0:.0f} s")
    # The split under test: all N files of train/ (the ones ImageDataGenerator reads), shuffled.
    splits = data.discover(root)
    splits = dataclasses.replace(splits, train=sorted(splits.train + splits.val), val=[])
    warm_page_cache(root)

    S, B = args.image_size, args.batch_size
    t0 = time.perf_counter()
    cache_path = cache_build.build_cache(root, S, work / "cache", force=True)
    build_rate = (args.n + len(CLASSES)) / (time.perf_counter() - t0)
    found = cache.find_cache(splits, S, work / "cache")
    assert found is not None

    steps = max(10, args.n // B)  # about one epoch per measurement

    def ours(name, use_cache, augment, steps=steps):
        ds = data.dataset_for(splits, "train", S, B, training=True, augment=augment, seed=0,
                              cache=found if use_cache else None).repeat()  # fmt: skip
        return time_batches(iter(ds), steps, name)

    def idg(name, augment):
        gen = seed_generator(augment).flow_from_directory(
            str(root / "train"), target_size=(S, S), batch_size=B, class_mode="sparse", shuffle=True, seed=0
        )
        return time_batches(gen, steps, name)

    methods = {
        "idg": lambda: idg("idg", False),
        "idg_augmented": lambda: idg("idg_augmented", True),
        "uncached": lambda: ours("uncached", False, False),
        "uncached_augmented": lambda: ours("uncached_augmented", False, True),
        # The cached pipelines are ~50x faster: time several epochs so one measurement is not 0.1 s.
        "cached": lambda: ours("cached", True, False, steps * 10),
        "cached_augmented": lambda: ours("cached_augmented", True, True, steps * 3),
    }
    rates = {k: [] for k in methods}
    for r in range(args.repeats):
        for name, fn in methods.items():
            rates[name].append(fn())
        log(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()))
    ratios = {
        "p1_cached": [c / i for c, i in zip(rates["cached"], rates["idg"])],
        "p1_uncached": [c / i for c, i in zip(rates["uncached"], rates["idg"])],
        "p1_augmented": [c / i for c, i in zip(rates["cached_augmented"], rates["idg_augmented"])],
        "p1_uncached_augmented": [c / i for c, i in zip(rates["uncached_augmented"], rates["idg_augmented"])],
    }

    if not args.skip_fit:
        fit_rates = measure_fit(args, splits, found, np, tf)
        rates.update(fit_rates)
        ratios["p2_fit_ratio"] = [a / b for a, b in zip(fit_rates["fit_cached"], fit_rates["fit_in_memory"])]

    result = {k: round(statistics.median(v), 2) for k, v in ratios.items()}
    result["targets"] = {k: {"target": t, "met": k in result and result[k] >= t} for k, t in TARGETS.items()}
    result["images_per_s"] = {k: round(statistics.median(v)) for k, v in rates.items()}
    result["images_per_s"]["cache_build"] = round(build_rate)
    # The same ratios in images per CPU-second of this process: what each pipeline costs, whatever
    # share of the cores other processes left it (on a shared machine the wall-clock ratios swing).
    per_cpu = {k: [rate for rate, _ in v] for k, v in CPU.items()}
    pairs = {"p1_cached": ("cached", "idg"), "p1_uncached": ("uncached", "idg"),
             "p1_augmented": ("cached_augmented", "idg_augmented"), "p2_fit_ratio": ("fit_cached", "fit_in_memory")}
    result["per_cpu_second"] = {
        k: round(statistics.median(a / b for a, b in zip(per_cpu[num], per_cpu[den])), 2)
        for k, (num, den) in pairs.items() if num in per_cpu
    }  # fmt: skip
    result["cores_busy"] = {k: round(statistics.median(c for _, c in v), 2) for k, v in CPU.items()}
    result["ranges"] = {k: [round(min(v), 2), round(max(v), 2)] for k, v in ratios.items()}
    result["ranges"].update({f"{k}_images_per_s": [round(min(v)), round(max(v))] for k, v in rates.items()})
    result["setup"] = {
        "images": args.n, "jpeg": "800x600, quality 90 (inat.data.demo.make_synthetic_jpegs)", "classes": len(CLASSES),
        "image_size": S, "batch_size": B, "rounds": args.repeats,
        "cache_mib": round(sum(f.stat().st_size for f in cache_path.iterdir()) / 2**20, 1),
        "idg_augmentation": SEED_AUGMENTATION,
    }  # fmt: skip
    result["machine"] = machine()
    return result


# ---- the seed's pipeline -------------------------------------------------------------------------

# ImageDataGenerator as the assignment notebooks used it: rescale, and for augmented runs
# rotation / zoom / shift / flip (our augmentation: flip, rotation, zoom, shift, brightness, contrast).
SEED_AUGMENTATION = dict(
    rotation_range=20, zoom_range=0.2, width_shift_range=0.2, height_shift_range=0.2, horizontal_flip=True
)


def seed_generator(augment: bool):
    from tf_keras.preprocessing.image import ImageDataGenerator

    return ImageDataGenerator(rescale=1.0 / 255, **(SEED_AUGMENTATION if augment else {}))


# ---- model.fit -----------------------------------------------------------------------------------


def measure_fit(args, splits, found, np, tf) -> dict:
    """model.fit images/s: batches from the cache vs the same images as in-memory float32 arrays.

    Two models train side by side, one short epoch (`--fit-steps` batches) at a time, alternating
    ABBA, so each pair sees nearly the same machine load; the first epoch of each (graph tracing)
    is discarded.
    """
    import keras

    from inat import data
    from inat.config import RunConfig
    from inat.models.common import compile_model, make_model

    cfg = RunConfig(image_size=args.image_size)  # the seed's best config, at 128 px
    rows = np.array([found.rows[rel] for rel, _ in splits.train])
    x = found.images[rows].astype(np.float32)  # exactly the pixels the cached pipeline yields
    y = np.array(splits.labels("train"), dtype=np.int32)
    ds = data.dataset_for(splits, "train", cfg.image_size, cfg.batch_size, training=True, cache=found)
    n = args.fit_steps * cfg.batch_size  # images per timed epoch

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.clock = Clock().__enter__()

        def on_epoch_end(self, epoch, logs=None):
            self.clock.__exit__()

    keras.utils.set_random_seed(0)
    nets = {}
    for key in ("fit_cached", "fit_in_memory"):
        nets[key] = make_model(cfg, len(splits.classes))
        compile_model(nets[key], cfg)
    epochs = {key: 0 for key in nets}

    def one_epoch(key) -> float:
        timer, e = EpochTimer(), epochs[key]
        kw = dict(epochs=e + 1, initial_epoch=e, steps_per_epoch=args.fit_steps, callbacks=[timer], verbose=0)
        if key == "fit_cached":
            nets[key].fit(ds, **kw)
        else:
            nets[key].fit(x, y, batch_size=cfg.batch_size, shuffle=True, **kw)
        epochs[key] += 1
        CPU.setdefault(key, []).append((n / timer.clock.cpu, timer.clock.cpu / timer.clock.wall))
        return n / timer.clock.wall

    for key in nets:
        one_epoch(key)  # traces the train step: discarded
    out = {key: [] for key in nets}
    for r in range(args.fit_pairs):
        order = list(nets) if r % 2 == 0 else list(nets)[::-1]
        for key in order:
            out[key].append(one_epoch(key))
        log(f"fit pair {r + 1}/{args.fit_pairs}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in out.items()))
    return out


# ---- helpers -------------------------------------------------------------------------------------


class Clock:
    """Wall time and this process's CPU time (all threads) over a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


CPU = {}  # method -> [(images per CPU-second, cores busy)], beside the wall-clock rates


def time_batches(iterator, steps: int, name: str, warmup: int = 3) -> float:
    """Images per second over `steps` batches, after `warmup` batches that fill the pipeline."""
    for _ in range(warmup):
        next(iterator)
    n = 0
    with Clock() as clock:
        for _ in range(steps):
            x, _ = next(iterator)
            n += len(x)
    CPU.setdefault(name, []).append((n / clock.cpu, clock.cpu / clock.wall))
    return n / clock.wall


def warm_page_cache(root: Path) -> None:
    for path in root.rglob("*.jpg"):
        path.read_bytes()


def ensure_bench_deps() -> None:
    """Make tf_keras (and scipy, which ImageDataGenerator's transforms need) importable."""
    import tensorflow as tf

    version = ".".join(tf.__version__.split(".")[:2])
    target = Path(os.environ.get("INAT_BENCH_DEPS", Path.home() / ".cache" / "inat-jobs" / "bench-deps"))
    target = target / f"tf{version}-py{sys.version_info.major}{sys.version_info.minor}"
    sys.path.insert(0, str(target))
    try:
        import scipy.ndimage  # noqa: F401
        import tf_keras  # noqa: F401

        return
    except ImportError:
        pass
    log(f"installing tf_keras {version}.* and scipy (--no-deps) into {target}")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
           f"tf_keras~={version}.0", "scipy"]  # fmt: skip
    subprocess.run(cmd, check=True)
    importlib.invalidate_caches()  # the target directory was empty when it went on sys.path
    import scipy.ndimage  # noqa: F401
    import tf_keras  # noqa: F401


def machine() -> dict:
    import keras
    import tensorflow as tf

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        mem_gib = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        mem_gib = None
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": mem_gib,
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "gpu": [d.name for d in tf.config.list_physical_devices("GPU")],
    }


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
