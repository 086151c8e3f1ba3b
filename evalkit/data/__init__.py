"""Data: built-in and file datasets, binarisation, integer images, labelled data, checks against a model.

* :mod:`.datasets` -- ``digits`` (scikit-learn's 8x8 digits, fixed split) and ``.npy``/``.npz``/
  ``.pt``/``.csv`` files as ``[N, D]`` float tensors; explicit, seeded binarisation;
* :mod:`.images` -- 8-bit (or L-level) images kept as integers, ``[N, C, H, W]``;
* :mod:`.labelled` -- inputs and targets for Bayesian networks;
* :mod:`.checks` -- does this data fit this model (width, finiteness, binary or integer values).

May import :mod:`evalkit.errors`, :mod:`evalkit.atomic` (the input-file check) and :mod:`evalkit.noise` only.
"""
from .checks import as_data_tensor, check_data_for_model, check_discrete_data, rows_text
from .datasets import BINARIZE, SPLITS, _digits_pixel_counts, binarize, digits_split, load_data  # noqa: F401
from .images import DIGITS_LEVELS, as_images, load_images, rescale_levels
from .labelled import check_targets_for_model, load_labelled_data

__all__ = ["BINARIZE", "DIGITS_LEVELS", "SPLITS", "as_data_tensor", "as_images", "binarize", "check_data_for_model",
           "check_discrete_data", "check_targets_for_model", "digits_split", "load_data", "load_images",
           "load_labelled_data", "rescale_levels", "rows_text"]
