"""Random streams drawn from (seed, epoch), so a resumed run draws what it would have drawn unbroken.

A run killed after epoch 2 and resumed must train epoch 3 on the same batch order, the same
augmentations and the same dropout masks as the run that was never interrupted. Stateful generators
cannot give that: a new process (or a new tf.data pipeline) starts them from the beginning again.
So every stream is re-keyed at the start of each epoch from the config's seed and the epoch number:

  data      the order of the training files and the augmentation of each batch (the input
            pipeline seeds its shuffle and its stateless augmentation seeds from it)
  dropout   every Keras SeedGenerator in the model (Dropout layers)

Model initialisation draws from `keras.utils.set_random_seed(seed)` once, when a run starts.

`INAT_DETERMINISTIC=1` additionally turns on TensorFlow's op determinism (under TensorFlow) (same results from the same
inputs, at some cost in speed), which makes a resumed run bit-for-bit the run that was not interrupted.
"""

from __future__ import annotations

import logging
import os
import zlib

import numpy as np

log = logging.getLogger("inat")
STREAMS = ("data", "dropout")


def epoch_seed(seed: int, epoch: int, stream: str) -> int:
    """A 31-bit seed for one stream in one epoch (0-based); independent across streams and epochs."""
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}")
    return zlib.crc32(f"{seed}:{epoch}:{stream}".encode()) & 0x7FFFFFFF


def reseed_model(model, seed: int, epoch: int) -> int:
    """Re-key every SeedGenerator state of `model` for `epoch`; returns how many were re-keyed.

    Keras keeps a SeedGenerator's state as a non-trainable variable named `seed_generator_state`
    (shape (2,)); assigning it is the public way to set where the stream continues from.
    """
    base = epoch_seed(seed, epoch, "dropout")
    states = [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]
    for i, var in enumerate(states):
        var.assign(np.array([base, i], dtype=var.dtype))
    return len(states)


def deterministic_from_env() -> bool:
    """Turn on TensorFlow's op determinism when INAT_DETERMINISTIC is set to a true value.

    Under the JAX backend there is nothing to turn on from here: XLA on a CPU is deterministic, and
    on a GPU its flag must be set before JAX starts (XLA_FLAGS=--xla_gpu_deterministic_ops=true,
    docs/backends.md)."""
    if os.environ.get("INAT_DETERMINISTIC", "").strip().lower() not in ("1", "true", "yes", "on"):
        return False
    import keras  # lazy: Keras, for the name of its backend

    if keras.backend.backend() != "tensorflow":
        log.info("INAT_DETERMINISTIC: on %s, set XLA_FLAGS=--xla_gpu_deterministic_ops=true for GPUs",
                 keras.backend.backend())
        return False
    import tensorflow as tf  # lazy: TensorFlow, only when determinism is asked for

    tf.config.experimental.enable_op_determinism()
    log.info("INAT_DETERMINISTIC: TensorFlow op determinism is on")
    return True
