"""The dataset: find the images, split and check them, and stream them into a model.

  splits       discovery of ROOT/train and ROOT/val, the seeded train/val/test split (`Splits`), and
               the cheap integrity check of every image
  pipeline     tf.data batches of a split (`dataset_for`, `make_dataset`), decoded or from a cache
  cache        the decoded-image cache: find one that matches the data and read it (`find_cache`)
  cache_build  build that cache (`build_cache`)
  demo         synthetic images in the iNaturalist layout

Exports the names of `splits` and `pipeline`; TensorFlow loads only when a pipeline is built. `cache`,
`cache_build` and `demo` import numpy: import them as modules (`from inat.data import cache`).
"""

from .pipeline import dataset_for, make_dataset
from .splits import (
    IMAGE_EXTENSIONS, SPLITS, Splits, check_images, check_root, describe, discover, drop_bad_images,
    image_files, image_problem, image_problems,
)  # fmt: skip

__all__ = [
    "IMAGE_EXTENSIONS", "SPLITS", "Splits", "check_images", "check_root", "dataset_for", "describe",
    "discover", "drop_bad_images", "image_files", "image_problem", "image_problems", "make_dataset",
]
