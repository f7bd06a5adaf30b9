"""The models: Part A's CNN from scratch, Part B's ImageNet bases, their weights and their cost.

  common       one interface over both families: `make_model`, `compile_model`, `load_model`,
               `input_size`, `conv_layer_names`
  scratch      Part A: the 5-block CNN
  transfer     Part B: an ImageNet base with a new head, frozen layers, its preprocessing as a layer
  weights      where the ImageNet weight files come from (`resolve_weights`, `fetch_weights`)
  flops        Part A's parameters and computations in closed form (`count`, `format_table`)

`common`, `scratch` and `transfer` import Keras, so this package exports only the light names of
`weights`; import the others as modules (`from inat.models.common import make_model`).
"""

from .weights import WEIGHT_FILES, cache_dir, fetch_weights, resolve_weights

__all__ = ["WEIGHT_FILES", "cache_dir", "fetch_weights", "resolve_weights"]
