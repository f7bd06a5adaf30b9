"""Where a run computes: its devices, replicas, precision, XLA and threads, decided once per run.

`place(cfg, replicas)` runs at the start of `inat.train.train`, before the run's first TensorFlow op:
threads and logical devices can only be set before TensorFlow's runtime starts, so in a process
that already ran TensorFlow they stay as they are (and run.json says what they are). What it
decides is recorded in run.json as `compute` (`Compute.record`).

- **Threads.** $INAT_THREADS, else $SLURM_CPUS_PER_TASK, else TensorFlow's default (every core of
  the machine). A job running K agents gives each agent process its share in $INAT_THREADS, so K
  agents on one node do not oversubscribe it. Intra-op and inter-op pools, and tf.data's own pool
  (`thread_budget`, read by the input pipeline).
- **Replicas.** One trial over R > 1 devices trains under `tf.distribute.MirroredStrategy` on the
  first R GPUs this process sees. `batch_size` stays the global batch (each replica gets
  batch_size / R) and Part A's batch norm is synchronized across replicas, so the step is the one a
  single device would take. With $INAT_CPU_REPLICAS=1 and no GPU, the CPU is split into R logical
  devices instead: the multi-device path, checked on a machine without GPUs.
- **Precision.** `auto`: bfloat16 on GPUs of compute capability >= 8.0, float16 on 7.x, float32 on
  CPUs (mixed float16 is unusable on a CPU). Keras applies loss scaling to float16 itself
  (`compile(auto_scale_loss=True)`), and a checkpoint keeps the loss scale with the optimizer.
- **XLA.** `auto`: on GPUs; on CPUs off under TensorFlow (2.4x slower), on under JAX, where no jit
  means op-by-op execution.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from .errors import ConfigError, InatError

log = logging.getLogger("inat")

THREADS_ENV = "INAT_THREADS"
CPU_REPLICAS_ENV = "INAT_CPU_REPLICAS"


def thread_budget() -> int | None:
    """The CPU threads this process may use: $INAT_THREADS, else $SLURM_CPUS_PER_TASK, else None."""
    for var in (THREADS_ENV, "SLURM_CPUS_PER_TASK"):
        raw = os.environ.get(var, "").strip()
        if not raw:
            continue
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(f"${var}={raw!r} is invalid; expected an integer >= 1")
        return value
    return None


@dataclass
class Compute:
    """What a run trains on. `strategy` is a tf.distribute strategy when replicas > 1, else None."""

    backend: str
    device: str  # "gpu" or "cpu"
    devices: list[str]
    replicas: int
    precision: str
    jit_compile: bool
    threads: dict[str, int | None]
    compute_capability: str | None = None
    cuda_visible_devices: str | None = field(default_factory=lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    strategy: Any = None

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "strategy"}

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Build, load and compile models in here: the precision as Keras's dtype policy, the strategy
        as its scope. The global policy is restored after, for whatever the process does next."""
        import keras  # lazy: Keras, only for a run that trains

        before = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.precision)
        try:
            with self.strategy.scope() if self.strategy is not None else contextlib.nullcontext():
                yield
        finally:
            keras.config.set_dtype_policy(before)


def place(cfg, replicas: int = 1, precision: str | None = None) -> Compute:
    """Decide the run's compute (module doc), setting threads and devices while that is still possible.
    `precision`: the one a resumed run started with, which wins over `cfg.precision`."""
    import keras  # lazy: Keras, only for a run that trains

    if replicas < 1:
        raise ConfigError(f"replicas {replicas}: expected an integer >= 1")
    backend = keras.backend.backend()
    budget = thread_budget()
    if backend == "tensorflow":
        threads = _tf_threads(budget)
        devices, capability, strategy = _tf_devices(replicas)
    else:
        if replicas > 1:
            raise ConfigError(f"one trial over {replicas} devices needs KERAS_BACKEND=tensorflow "
                              f"(it runs under tf.distribute); this process runs {backend}")
        threads = {"budget": budget}
        devices, capability, strategy = _jax_devices()
    device = "gpu" if any("gpu" in d.lower() for d in devices) else "cpu"
    return Compute(
        backend=backend, device=device, devices=devices, replicas=replicas,
        precision=precision or resolve_precision(cfg.precision, device, capability),
        jit_compile=resolve_jit(cfg.jit_compile, device, backend),
        threads=threads, compute_capability=capability, strategy=strategy,
    )  # fmt: skip


def resolve_precision(precision: str, device: str, capability: str | None) -> str:
    if precision != "auto":
        return precision
    if device != "gpu" or not capability:
        return "float32"
    major = int(capability.split(".")[0])
    return "mixed_bfloat16" if major >= 8 else "mixed_float16" if major == 7 else "float32"


def resolve_jit(jit_compile: bool | str, device: str, backend: str) -> bool:
    if jit_compile != "auto":
        return bool(jit_compile)
    return device == "gpu" or backend != "tensorflow"


# ---- TensorFlow -------------------------------------------------------------------------------------


def _tf_threads(budget: int | None) -> dict[str, int | None]:
    import tensorflow as tf  # lazy: TensorFlow, under its backend only

    if budget is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(budget)
            tf.config.threading.set_inter_op_parallelism_threads(budget)
        except RuntimeError:  # the runtime already started in this process: it keeps its pools
            if tf.config.threading.get_intra_op_parallelism_threads() != budget:
                log.warning("threads: TensorFlow already started in this process; its thread pools "
                            "stay as they are, not %d", budget)
    return {"budget": budget, "intra_op": tf.config.threading.get_intra_op_parallelism_threads() or None,
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads() or None}


def _tf_devices(replicas: int):
    import tensorflow as tf  # lazy: as above

    gpus = tf.config.list_physical_devices("GPU")
    capability = None
    if gpus:
        found = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
        capability = ".".join(map(str, found)) if found else None
    if replicas == 1:
        return [gpus[0].name if gpus else "/physical_device:CPU:0"], capability, None
    if len(gpus) >= replicas:
        names = [f"/gpu:{i}" for i in range(replicas)]
    elif not gpus and os.environ.get(CPU_REPLICAS_ENV, "").strip() in ("1", "true", "yes"):
        names = _split_cpu(tf, replicas)
    else:
        seen = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise InatError(f"one trial over {replicas} GPUs, but this process sees {len(gpus)}"
                        + (f" (CUDA_VISIBLE_DEVICES={seen})" if seen is not None else ""))
    return names, capability, tf.distribute.MirroredStrategy(devices=names)


def _split_cpu(tf, replicas: int) -> list[str]:
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError:  # already started: usable only if it was split before
        pass
    logical = tf.config.list_logical_devices("CPU")
    if len(logical) < replicas:
        raise InatError(f"${CPU_REPLICAS_ENV}: TensorFlow already started in this process with "
                        f"{len(logical)} CPU device(s); {replicas} replicas need a fresh process")
    return [d.name for d in logical[:replicas]]


# ---- JAX ----------------------------------------------------------------------------------------------


def _jax_devices():
    import jax  # lazy: JAX, under its backend only

    first = jax.devices()[0]
    capability = getattr(first, "compute_capability", None) if first.platform == "gpu" else None
    return [f"{first.platform}:{first.id}"], (str(capability) if capability else None), None
