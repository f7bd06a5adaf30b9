"""Batches without TensorFlow, for the Keras backends that are not TensorFlow (JAX, PyTorch).

`ArrayBatches` is a `keras.utils.PyDataset` over uint8 images already in memory: the decoded-image
cache's memory-mapped array (`inat.data.cache`), or a split decoded once (`pipeline.decode_split`).
A batch is a fancy-indexed copy of its rows; with `augment`, `augment_batch` transforms the whole
batch with `keras.ops`, so on a GPU it runs there. Worker threads (PyDataset's `workers`) prepare
the next batches while the model trains on this one.

The random numbers are drawn on the host from numpy, keyed by (seed, batch index): the same batches
whatever the backend, the thread schedule or a resume (train() passes a new seed per epoch,
`inat.seeding`). They are not the numbers of the tf.data pipeline, whose stateless TensorFlow
generator has no numpy twin; both apply the same transform of the same strengths.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from .augment import CONTRAST, MAX_BRIGHTNESS, MIN_ZOOM_SIDE

# Threads that gather (and augment) batches ahead of the model; numpy's fancy indexing and XLA's ops
# release the GIL. Two are plenty on these CPUs; whether they keep a GPU fed is what
# benchmarks/gpu_throughput.py's input_stall and loader_img_s measure (not yet run on a GPU).
WORKERS = 2


class ArrayBatches(keras.utils.PyDataset):
    """Batches (float32 images in [0, 255], (B, S, S, 3); int32 labels, (B,)) of `images[rows]`.

    With shuffle=False the order is that of `rows`, so predictions line up with labels. The last
    batch may be short, as in the tf.data pipeline.
    """

    def __init__(
        self, images: np.ndarray, rows, labels, batch_size: int, *,
        shuffle: bool, augment: bool, seed: int = 0, workers: int = WORKERS,
    ):  # fmt: skip
        # Threads, not processes: the array is a memory map (or already in this process), and a
        # forked JAX runtime is not safe to use.
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max(2 * workers, 4))
        self.images = images
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int32)
        if len(self.rows) != len(self.labels):
            raise ValueError(f"{len(self.rows)} rows but {len(self.labels)} labels")
        self.batch_size = int(batch_size)
        self.augment = augment
        self.seed = int(seed)
        n = len(self.rows)
        self.order = np.random.default_rng(self.seed).permutation(n) if shuffle else np.arange(n)

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)  # ends `for batch in ds` (the sequence protocol)
        take = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        rows = self.rows[take]
        # Gather in row order (sequential reads of the memory map), then put back the batch order.
        sort = np.argsort(rows, kind="stable")
        images = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        images[sort] = self.images[rows[sort]]
        labels = self.labels[take]
        if not self.augment:
            return images.astype(np.float32), labels
        uniforms = np.random.default_rng([self.seed, index]).random((len(rows), 6), dtype=np.float32)
        return augment_batch(images, uniforms), labels


def augment_batch(images, uniforms: np.ndarray):
    """Random zoom-in, shift and horizontal flip, then brightness and contrast, for a whole batch.

    `images` (B, S, S, 3) in [0, 255], uint8 or float; `uniforms` (B, 6) in [0, 1): zoom, y, x, flip,
    brightness, contrast, as in `inat.data.pipeline.augment_batch`. One affine resampling and one
    fused multiply-add for the batch, in keras.ops: returns a float32 tensor of the backend.
    """
    u = np.asarray(uniforms, dtype=np.float32)
    size = images.shape[1]
    side = MIN_ZOOM_SIDE + (1.0 - MIN_ZOOM_SIDE) * u[:, 0]
    y0, x0 = u[:, 1] * (1.0 - side), u[:, 2] * (1.0 - side)
    flip = u[:, 3] < 0.5
    # affine_transform maps each output pixel (x, y) to the input point (a0 x + a2, b1 y + b2): a
    # square of `side` of the image starting at (x0, y0), read right to left where flipped.
    last = size - 1
    zero = np.zeros_like(side)
    transform = np.stack([
        np.where(flip, -side, side), zero, np.where(flip, (x0 + side) * last, x0 * last),
        zero, side, y0 * last, zero, zero,
    ], axis=1).astype(np.float32)  # fmt: skip
    x = ops.cast(ops.convert_to_tensor(images), "float32")
    out = ops.image.affine_transform(x, ops.convert_to_tensor(transform), interpolation="bilinear",
                                     fill_mode="nearest", data_format="channels_last")  # fmt: skip
    # Contrast around each image's per-channel mean, taken on a 1-in-16 pixel sample (as tf.data's).
    mean = ops.mean(x[:, ::4, ::4, :], axis=(1, 2), keepdims=True)
    contrast = (CONTRAST[0] + (CONTRAST[1] - CONTRAST[0]) * u[:, 5])[:, None, None, None]
    brightness = ((2.0 * u[:, 4] - 1.0) * (MAX_BRIGHTNESS * 255.0))[:, None, None, None]
    contrast, brightness = ops.convert_to_tensor(contrast), ops.convert_to_tensor(brightness)
    return ops.clip(out * contrast + (mean * (1.0 - contrast) + brightness), 0.0, 255.0)
