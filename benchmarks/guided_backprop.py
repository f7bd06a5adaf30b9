"""Guided backprop of 10 conv5 neurons against one plain forward+backward pass of the same 10 images.

Not a test: prints one JSON object. Model: RunConfig() defaults (the scratch CNN, selu, 224 px,
filters 32-64-64-128-128), random weights (timing does not depend on them).

    python benchmarks/guided_backprop.py [--image-size 224] [--repeats 15] [--activation relu]

Timed, each as a compiled tf.function, median of --repeats calls after two warm-up calls, the four
taken in turn so that other load on a shared machine falls on all of them alike:
  guided_10_batched   the 10 neurons' guided gradients: one forward to conv5 + one backward, batch of 10
  guided_10_separate  the same 10 neurons one at a time (what batching saves)
  plain_same_target   the plain gradient of the same 10 neurons (same graph, ordinary activations)
  plain_full_model    a whole-model forward + backward of the cross-entropy loss w.r.t. the 10 images
  neuron_search       finding where 10 neurons fire most over the 10 images (forward only)
The goal is guided_10_batched / plain_full_model <= 3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from inat.figures import guided  # noqa: E402
from inat.models.common import make_model  # noqa: E402
from inat.config import RunConfig  # noqa: E402


def interleaved_medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin so that load from other
    processes on a shared machine falls on all of them alike."""
    for fn in fns.values():
        fn()
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--activation", default=None, help="override RunConfig's default (selu)")
    args = parser.parse_args()

    cfg = RunConfig().replace(image_size=args.image_size)
    if args.activation:
        cfg = cfg.replace(activation=args.activation)
    model = make_model(cfg, 10)
    n = 10
    shape = (n, cfg.image_size, cfg.image_size, 3)
    images = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    labels = tf.constant(np.arange(n) % 10, tf.int32)
    target = "act5"

    features = guided.activation_model(model, target)
    channels = list(range(0, 10 * 7, 7))[:n]
    t0 = time.perf_counter()
    spots = guided.strongest_locations(features, images, channels)
    search = time.perf_counter() - t0
    idx = np.array([s[0] for s in spots])
    rows, cols = [s[1] for s in spots], [s[2] for s in spots]
    batch = images[idx]

    guided_grads = guided.NeuronGradients(guided.guided_model(model, target))
    plain_grads = guided.NeuronGradients(features)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()

    @tf.function(input_signature=[tf.TensorSpec((None, cfg.image_size, cfg.image_size, 3), tf.float32)])
    def full_model_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = loss_fn(labels, model(x, training=False))
        return tape.gradient(loss, x)

    x = tf.constant(batch)

    def separately():
        for i in range(n):
            guided_grads(batch[i : i + 1], rows[i : i + 1], cols[i : i + 1], channels[i : i + 1])

    timings = interleaved_medians({
        "guided_10_batched": lambda: guided_grads(batch, rows, cols, channels),
        "guided_10_separate": separately,
        "plain_same_target": lambda: plain_grads(batch, rows, cols, channels),
        "plain_full_model": lambda: full_model_grad(x).numpy(),
    }, args.repeats)

    def ratio(a: str, b: str) -> float:
        return round(timings[a] / timings[b], 2)

    print(json.dumps({
        "model": f"scratch {cfg.activation}, {cfg.image_size} px, filters {cfg.filt_org}, "
                 f"kernels {cfg.kernel_size}",
        "batch": n,
        "seconds": {k: round(v, 4) for k, v in timings.items()} | {"neuron_search": round(search, 4)},
        "ratio_guided_vs_full_model_pass": ratio("guided_10_batched", "plain_full_model"),
        "ratio_guided_vs_plain_same_target": ratio("guided_10_batched", "plain_same_target"),
        "speedup_batched_vs_separate": ratio("guided_10_separate", "guided_10_batched"),
        "retraces": guided_grads._fn.experimental_get_tracing_count(),
        "goal": "ratio_guided_vs_full_model_pass <= 3",
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "tensorflow": tf.__version__},
    }, indent=2))


if __name__ == "__main__":
    main()
