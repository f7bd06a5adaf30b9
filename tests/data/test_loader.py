"""The backend-neutral loader (`inat.data.loader`): order, shuffling, the end of an epoch, and an
augmentation that is the tf.data pipeline's, computed with keras.ops."""

from __future__ import annotations

import numpy as np
import pytest

from inat.data import loader, pipeline


def images(n: int = 10, size: int = 16) -> np.ndarray:
    """Image i is filled with the value i (so a batch says which rows it holds) plus a gradient."""
    ramp = np.linspace(0, 100, size, dtype=np.float32)[None, :, None]
    return np.stack([np.clip(ramp + i, 0, 255) + np.zeros((size, size, 3), np.float32) for i in range(n)]).astype(np.uint8)


def rows_of(batch) -> list[int]:
    return [int(x[0, 0, 0]) for x in np.asarray(batch)]


def test_unshuffled_batches_keep_the_row_order_and_the_last_batch_is_short():
    arr = images()
    ds = loader.ArrayBatches(arr, [7, 2, 9, 0, 4], [70, 20, 90, 0, 40], 2, shuffle=False, augment=False)
    assert len(ds) == 3
    got = list(ds)  # the sequence protocol: __getitem__ until IndexError
    assert [rows_of(x) for x, _ in got] == [[7, 2], [9, 0], [4]]
    assert [list(y) for _, y in got] == [[70, 20], [90, 0], [40]]
    x, y = got[0]
    assert x.dtype == np.float32 and y.dtype == np.int32 and x.shape == (2, 16, 16, 3)
    with pytest.raises(IndexError):
        ds[3]


def test_shuffle_is_a_seeded_permutation():
    arr = images(10)
    order = lambda seed: [r for x, _ in loader.ArrayBatches(arr, range(10), range(10), 4, shuffle=True,  # noqa: E731
                                                             augment=False, seed=seed) for r in rows_of(x)]
    assert order(1) == order(1)
    assert sorted(order(1)) == list(range(10)) and order(1) != list(range(10))
    assert order(1) != order(2)


def test_labels_travel_with_their_rows_when_shuffled():
    arr = images(10)
    for x, y in loader.ArrayBatches(arr, range(10), [10 * i for i in range(10)], 3, shuffle=True, augment=False):
        assert [10 * r for r in rows_of(x)] == list(y)


def test_augmentation_is_keyed_by_seed_and_batch_and_stays_in_range():
    arr = images(8, 32)
    a = loader.ArrayBatches(arr, range(8), range(8), 4, shuffle=False, augment=True, seed=3)
    b = loader.ArrayBatches(arr, range(8), range(8), 4, shuffle=False, augment=True, seed=3)
    c = loader.ArrayBatches(arr, range(8), range(8), 4, shuffle=False, augment=True, seed=4)
    np.testing.assert_array_equal(np.asarray(a[1][0]), np.asarray(b[1][0]))
    assert not np.allclose(np.asarray(a[1][0]), np.asarray(c[1][0]))
    assert not np.allclose(np.asarray(a[1][0]), arr[4:8].astype(np.float32))
    out = np.asarray(a[0][0])
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 255.0


def test_neutral_uniforms_leave_the_image_alone_and_a_flip_mirrors_it():
    arr = images(2, 16)
    # zoom side 1 (u0 = 1 is just outside [0, 1), fine for the formula), no flip, contrast 1, no brightness
    keep = np.array([[1.0, 0.0, 0.0, 0.9, 0.5, 0.5]] * 2, np.float32)
    np.testing.assert_allclose(np.asarray(loader.augment_batch(arr, keep)), arr.astype(np.float32), atol=1e-3)
    flip = keep.copy()
    flip[:, 3] = 0.1
    np.testing.assert_allclose(np.asarray(loader.augment_batch(arr, flip)), arr[:, :, ::-1].astype(np.float32),
                               atol=1e-3)


def test_the_same_uniforms_give_the_tf_pipelines_augmentation():
    """The oracle: inat.data.pipeline's crop_and_resize version, given the same six uniforms per image."""
    pytest.importorskip("tensorflow")
    arr = images(16, 32)
    u = np.random.default_rng(0).random((16, 6), dtype=np.float32)
    ours = np.asarray(loader.augment_batch(arr, u))
    theirs = pipeline.augment_with(arr, u).numpy()
    assert np.abs(ours - theirs).max() < 1e-3  # measured: 5e-5 (float32 rounding)


def test_a_split_decoded_once_keeps_the_labels_it_was_asked_for(demo_data):
    """The memo of decoded splits is keyed by the labels too: visualize decodes test files with their
    positions as labels, after evaluate may have decoded the same files with their classes."""
    pytest.importorskip("tensorflow")
    from inat import data

    splits = data.discover(demo_data)
    paths, classes = splits.paths("test")[:5], splits.labels("test")[:5]
    first, labels = pipeline.decode_split(paths, classes, 32)
    again, positions = pipeline.decode_split(paths, list(range(5)), 32)
    assert list(labels) == classes and list(positions) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(first, again)
    assert first.dtype == np.uint8 and first.shape == (5, 32, 32, 3)
