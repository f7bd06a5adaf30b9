"""The tf.data pipeline: batches of one split, decoded from the JPEGs or gathered from the cache.

`make_dataset` builds a pipeline from a list of paths, `dataset_for` the one of a `Splits` split (from
a decoded-image cache when one was found). `decode_resize` and `finish_batches` are the ops the cache
shares, so that a run sees the same pixels with or without one. TensorFlow is imported only inside
these functions, so that `--help` and error paths stay fast.
"""

from __future__ import annotations

import os

from ..devices import thread_budget
from ..errors import DataError
from .augment import CONTRAST, MAX_BRIGHTNESS, MIN_ZOOM_SIDE
from .splits import Splits


def make_dataset(
    paths: list[str], labels: list[int], image_size: int, batch_size: int, *,
    shuffle: bool, augment: bool, seed: int = 0, repeat: bool = False,
):  # fmt: skip
    """Batches of (float32 images in [0, 255], shape (B, S, S, 3); int32 labels, shape (B,)).

    Pixels are not rescaled: each model does its own rescaling or `preprocess_input`. Images are
    resized to S x S without keeping the aspect ratio (as image_dataset_from_directory does by
    default) and rounded to whole levels, exactly as `inat.data.cache` stores them, so a run sees the
    same pixels with or without a cache. With shuffle=False the order is that of `paths`, so
    predictions line up with labels.
    """
    import tensorflow as tf  # lazy: TensorFlow, only when a pipeline is built

    paths = [os.fspath(p) for p in paths]
    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
    if not paths:
        raise DataError("no images to load (the split is empty)")
    # A missing file would be swallowed by ignore_errors below and shrink every epoch unnoticed:
    # catch the usual cause (the dataset moved; Splits.load(root=...) fixes it) here, loudly.
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(
            f"{missing[0]}: image not found ({len(missing)} of {len(paths)} missing); "
            "has the dataset moved? pass its new root (--data)"
        )

    ds = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int32)))
    if shuffle:
        # Shuffle file names, not decoded pixels: a full-size buffer costs a few bytes per image.
        # The same order for every iterator (as for the augmentation below); only a repeat reshuffles.
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=repeat)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(
        lambda path, label: (decode_resize(tf.io.read_file(path), image_size), label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    # Last line of defence: a file corrupt in the middle passes check_images, and TF then either
    # decodes it with garbage pixels or raises. Drop the failing element instead of killing a
    # multi-hour job. TF logs each one ("Error raised with error message ... jpeg::Uncompress
    # failed"; it does not name the file) and the training loop counts the images seen per epoch.
    ds = ds.ignore_errors(log_warning=True)
    return finish_batches(ds.batch(batch_size), augment=augment, seed=seed)


def decode_resize(contents, image_size: int):
    """Encoded JPEG/PNG bytes -> uint8 (S, S, 3). The one decode that the pipeline and the cache share.

    JPEGs are decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) whenever the scaled image
    still has at least S pixels on its short side: a 800x600 photo becomes 200x150 for S=128
    without ever being decoded in full. That is 1.5-2.5x faster than a full decode and, because
    DCT scaling averages whole 8x8 blocks, less aliased than resizing the full image bilinearly.
    """
    import tensorflow as tf  # lazy: TensorFlow, as above

    def jpeg():
        shape = tf.io.extract_jpeg_shape(contents)
        short = tf.minimum(shape[0], shape[1])
        branch = tf.add_n([tf.cast(short >= r * image_size, tf.int32) for r in (2, 4, 8)])
        ratios = (1, 2, 4, 8)
        return tf.switch_case(branch, [lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r) for r in ratios])

    def other():
        # decode_image sniffs PNG/GIF/BMP whatever the extension; channels=3 turns grayscale,
        # RGBA (alpha dropped) and palette images into RGB. decode_jpeg does the same for
        # grayscale and CMYK/YCCK JPEGs.
        return tf.io.decode_image(contents, channels=3, expand_animations=False)

    image = tf.cond(tf.io.is_jpeg(contents), jpeg, other)
    image.set_shape((None, None, 3))
    image = tf.image.resize(image, (image_size, image_size), method="bilinear", antialias=False)
    return tf.ensure_shape(tf.saturate_cast(tf.round(image), tf.uint8), (image_size, image_size, 3))


def finish_batches(ds, *, augment: bool, seed: int = 0):
    """uint8 batches (B, S, S, 3) -> float32 batches, augmented if asked, prefetched.

    Augmentation runs here, on whole batches, not per image: one batched op per step costs far
    less per image than a map over single images (see docs/performance.md for the numbers).
    """
    import tensorflow as tf  # lazy: TensorFlow, as above

    if augment:
        # One stateless seed pair per batch. Every epoch builds its pipeline from its own seed, and
        # any iterator over this one sees the same pairs: tf.distribute iterates a dataset once
        # before training, so re-drawing per iterator would make a multi-replica run differ.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=False).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda xy, s: (augment_batch(xy[0], s), xy[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def augment_batch(images, seed):
    """Random zoom-in, shift and horizontal flip, then brightness and contrast, for a whole batch.

    `images` is (B, S, S, 3), uint8 or float, in [0, 255]; `seed` a stateless seed pair; returns
    float32. Every image gets its own parameters, yet the batch costs one crop_and_resize (a box
    with x1 > x2 samples the crop mirrored, so the flip is free) and one fused multiply-add:
    no per-image ops, no Python.
    """
    import tensorflow as tf  # lazy: TensorFlow, as above

    u = tf.random.stateless_uniform((tf.shape(images)[0], 6), seed)  # zoom, y, x, flip, brightness, contrast
    return augment_with(images, u)


def augment_with(images, u):
    """`augment_batch` with its uniforms (B, 6) given: what tests/data/test_loader.py compares the
    backend-neutral `inat.data.loader.augment_batch` with."""
    import tensorflow as tf  # lazy: TensorFlow, as above

    size = images.shape[1]
    n = tf.shape(images)[0]
    u = tf.convert_to_tensor(u, tf.float32)
    side = MIN_ZOOM_SIDE + (1.0 - MIN_ZOOM_SIDE) * u[:, 0]
    y0, x0 = u[:, 1] * (1.0 - side), u[:, 2] * (1.0 - side)
    flip = u[:, 3] < 0.5
    boxes = tf.stack([y0, tf.where(flip, x0 + side, x0), y0 + side, tf.where(flip, x0, x0 + side)], axis=1)
    out = tf.image.crop_and_resize(images, boxes, tf.range(n), (size, size))  # bilinear, float32
    # Contrast scales around each image's per-channel mean (as tf.image.adjust_contrast), taken
    # on a 1-in-16 pixel sample of the input: the same pivot to within a level, at 1/16 the cost.
    mean = tf.reduce_mean(tf.cast(images[:, ::4, ::4, :], tf.float32), axis=(1, 2), keepdims=True)
    contrast = (CONTRAST[0] + (CONTRAST[1] - CONTRAST[0]) * u[:, 5])[:, None, None, None]
    brightness = ((2.0 * u[:, 4] - 1.0) * (MAX_BRIGHTNESS * 255.0))[:, None, None, None]
    return tf.clip_by_value(out * contrast + (mean * (1.0 - contrast) + brightness), 0.0, 255.0)


def dataset_for(
    splits: Splits, split: str, image_size: int, batch_size: int, *,
    training: bool, augment: bool = False, seed: int = 0, cache=None,
):  # fmt: skip
    """The pipeline for one split: shuffled (and augmented, if asked) only when training.

    `cache` is an `inat.data.cache.Cache`, the decoded-image cache that `find_cache` found matching
    the dataset on disk (it decides, and logs why not): batches then come from it, unless the split
    names files it does not hold. Otherwise (None) the JPEGs are decoded as usual.

    Under the TensorFlow backend this is a tf.data pipeline; under any other Keras backend an
    `inat.data.loader.ArrayBatches` over the cache, or over the split decoded once into memory:
    TensorFlow then only decodes, it is never in the training loop.
    """
    import keras  # lazy: Keras (and with it the backend), only when a pipeline is built

    if keras.backend.backend() != "tensorflow":
        return _array_batches(splits, split, image_size, batch_size, training=training,
                              augment=augment and training, seed=seed, cache=cache)  # fmt: skip
    ds = None
    if cache is not None:
        ds = cache.dataset(
            splits, split, batch_size, image_size=image_size,
            shuffle=training, augment=augment and training, seed=seed,
        )  # fmt: skip
    if ds is None:
        ds = make_dataset(
            splits.paths(split), splits.labels(split), image_size, batch_size,
            shuffle=training, augment=augment and training, seed=seed,
        )  # fmt: skip
    return _within_thread_budget(ds)


def _within_thread_budget(ds):
    """tf.data's own thread pool kept to the process's share of CPUs (`inat.devices.thread_budget`):
    left alone, it sizes itself to every core of the node, whatever the job was given."""
    budget = thread_budget()
    if budget is None:
        return ds
    import tensorflow as tf  # lazy: TensorFlow, as above

    options = tf.data.Options()
    options.threading.private_threadpool_size = budget
    return ds.with_options(options)


def _array_batches(splits: Splits, split: str, image_size: int, batch_size: int, *, training, augment, seed, cache):
    import numpy as np  # lazy: numpy, as Keras below

    from .loader import WORKERS, ArrayBatches  # lazy: Keras, only when a pipeline is built

    found = None
    if cache is not None:
        cache.check_size(image_size)
        found = cache.split_rows(splits, split)
    if found is not None:
        images, (rows, labels) = cache.images, found
    else:
        images, labels = decode_split(splits.paths(split), splits.labels(split), image_size)
        rows = np.arange(len(labels))
    workers = min(WORKERS, thread_budget() or WORKERS)
    return ArrayBatches(images, rows, labels, batch_size, shuffle=training, augment=augment, seed=seed,
                        workers=workers)


# The splits this process decoded (key: the files, their labels and the size), so that a run
# without a cache decodes its train and val splits once, not every epoch. A few entries.
_DECODED: dict = {}


def decode_split(paths: list[str], labels: list[int], image_size: int):
    """(uint8 images (N, S, S, 3), int32 labels (N,)) of `paths`, decoded as `make_dataset` does.

    Images that fail to decode are dropped with their labels (TensorFlow logs each one), as in the
    tf.data pipeline. Decoding is the one thing here that needs TensorFlow.
    """
    import numpy as np  # lazy: numpy, only when a pipeline is built

    # The labels belong in the key: visualize decodes test files with their positions as labels.
    key = (tuple(os.fspath(p) for p in paths), tuple(int(v) for v in labels), int(image_size))
    if key not in _DECODED:
        try:
            import tensorflow  # noqa: F401  # lazy: TensorFlow, the JPEG decoder
        except ImportError:
            raise DataError(
                f"{key[0][0] if key[0] else 'the split'}: decoding JPEGs needs TensorFlow (pip install "
                "tensorflow-cpu) or a decoded-image cache built where it is installed (inat-jobs cache-data)"
            ) from None
        xs, ys = [], []
        for x, y in make_dataset(list(key[0]), list(key[1]), image_size, 256, shuffle=False, augment=False):
            xs.append(x.numpy().astype(np.uint8))  # whole levels in float32: exact
            ys.append(y.numpy())
        if len(_DECODED) >= 3:
            _DECODED.pop(next(iter(_DECODED)))
        _DECODED[key] = (np.concatenate(xs) if xs else np.zeros((0, image_size, image_size, 3), np.uint8),
                         np.concatenate(ys).astype(np.int32) if ys else np.zeros(0, np.int32))
    return _DECODED[key]
