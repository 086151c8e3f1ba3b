"""Integer-valued image data: 8-bit arrays from files, the digits' 17 grey levels, checks.

Images stay integers (``uint8`` or ``int64``) in ``[N, C, H, W]`` until a model's decoder
decides how to scale them (see :mod:`evalkit.models.discrete`). Models with a discrete
decoder state the number of values a pixel takes in ``data_levels`` (256 for 8-bit data);
:func:`check_discrete_data` rejects scaled floats and values out of range.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .checks import check_discrete_data, rows_text  # noqa: F401 (check_discrete_data re-exported)
from .datasets import SPLITS, _digits_pixel_counts, _read_file, digits_split
from ..atomic import check_input_file
from ..errors import DataError, InputError

LAYOUTS = ("NHW", "NHWC", "NCHW")
CHANNEL_COUNTS = (1, 3, 4)
"""Channel counts the layout detection recognises (grey, RGB, RGBA)."""

DIGITS_LEVELS = 17
"""The digits' pixels are counts 0..16 (scikit-learn's 8x8 digits): 17 grey levels."""


def _detect_layout(shape: tuple[int, ...], name: str) -> str:
    """Return the layout of an image array of ``shape`` or raise :class:`DataError` when it is ambiguous."""
    if len(shape) == 3:
        return "NHW"
    if len(shape) != 4:
        raise DataError(
            f"{name} has shape {shape}; images must be [N, H, W], [N, H, W, C] or [N, C, H, W] (flattened data: "
            "reshape it to images first)."
        )
    channels_first, channels_last = shape[1] in CHANNEL_COUNTS, shape[3] in CHANNEL_COUNTS
    if channels_first != channels_last:
        return "NCHW" if channels_first else "NHWC"
    raise DataError(
        f"{name} has shape {shape}, which could be [N, C, H, W] or [N, H, W, C]; pass layout='NCHW' or "
        "layout='NHWC'."
    )


def as_images(array: Union[np.ndarray, torch.Tensor], *, layout: Optional[str] = None, name: str = "the data") -> torch.Tensor:
    """Return an integer image array as a tensor ``[N, C, H, W]`` (uint8 kept, other integers int64).

    Parameters
    ----------
    array : ndarray or Tensor, shape (N, H, W), (N, H, W, C) or (N, C, H, W)
        Non-negative integers, or floats that are all integers.
    layout : {"NHW", "NHWC", "NCHW"}, optional
        Default: detected (3-D is NHW; 4-D is NCHW or NHWC by which axis has 1, 3 or 4 entries).
    name : str
        What to call the array in error messages.

    Raises
    ------
    DataError
        Not integer-valued (e.g. images scaled to [0, 1]), negative values, empty, ambiguous layout.
    """
    if layout is not None and layout not in LAYOUTS:
        raise InputError(f"Expected argument `layout` to be one of {list(LAYOUTS)}, got {layout!r}.")
    tensor = array.detach().cpu() if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
    if tensor.dtype == torch.bool or tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in _INT_DTYPES):
        raise DataError(f"{name} holds {tensor.dtype} values; images must be integer levels (0..255 for 8-bit images, 0..L-1 for L levels).")
    shape = tuple(tensor.shape)
    layout = layout or _detect_layout(shape, name)
    if len(shape) != len(layout):
        raise DataError(f"{name} has shape {shape}, which does not match layout={layout!r}; pass the right layout.")
    if tensor.numel() == 0:
        raise DataError(f"{name} holds no images (shape {shape}); check the file and the split.")
    if tensor.is_floating_point():
        if not bool(torch.isfinite(tensor).all()) or bool((tensor != tensor.round()).any()):
            raise DataError(
                f"{name} holds non-integer float values (range [{float(tensor.min()):g}, {float(tensor.max()):g}]); "
                "images must be the integer levels (0..255 for 8-bit images, not values divided by 255; 0..L-1 for L levels)."
            )
        tensor = tensor.to(torch.int64)
    if int(tensor.min()) < 0:
        raise DataError(f"{name} holds negative values (minimum {int(tensor.min())}); images must be integer levels (0..255 for 8-bit images, 0..L-1 for L levels).")
    if tensor.dtype != torch.uint8:
        tensor = tensor.to(torch.int64)
    if layout == "NHW":
        tensor = tensor.unsqueeze(1)
    elif layout == "NHWC":
        tensor = tensor.permute(0, 3, 1, 2)
    return tensor.contiguous()


def rescale_levels(images: torch.Tensor, from_levels: int, to_levels: int) -> torch.Tensor:
    """Map integer levels ``0..from_levels-1`` to ``0..to_levels-1`` so that each keeps its intensity.

    Parameters
    ----------
    images : Tensor
        Integer-valued levels (any integer or float dtype; the result has the same dtype).
    from_levels, to_levels : int
        Level counts S and L (at least 2).

    Returns
    -------
    Tensor, same shape and dtype
        ``v' = floor(v * (L - 1) / (S - 1) + 1/2)``: level v of S is the intensity v / (S - 1)
        (0 black, S - 1 white, the scale evalkit's discrete decoders use: ``x * 2 / (L - 1) - 1``),
        rounded to the nearest of the L levels, halves up. Computed exactly in integers as
        ``(2 v (L - 1) + S - 1) // (2 (S - 1))``; black and white stay black and white.

    Examples
    --------
    >>> rescale_levels(torch.tensor([0, 1, 8, 15, 16]), 17, 256).tolist()  # the digits' 17 levels as 8-bit values
    [0, 16, 128, 239, 255]
    """
    for name, value in (("from_levels", from_levels), ("to_levels", to_levels)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
            raise InputError(f"Expected argument `{name}` to be an int >= 2, got {value!r}.")
    s, l = int(from_levels), int(to_levels)
    v = images.to(torch.int64)
    if bool(((v < 0) | (v > s - 1)).any()):
        raise DataError(f"the images hold values outside 0..{s - 1}, so they do not have {s} levels; check from_levels.")
    return ((2 * v * (l - 1) + s - 1) // (2 * (s - 1))).to(images.dtype)


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32, torch.uint64)


def load_images(
    source: Union[str, os.PathLike, np.ndarray, torch.Tensor],
    *,
    layout: Optional[str] = None,
    split: str = "test",
) -> torch.Tensor:
    """Load integer-valued images as a tensor ``[N, C, H, W]``.

    Parameters
    ----------
    source : str, path, ndarray or Tensor
        ``"digits"`` -- scikit-learn's 8x8 digits as 17-level grey images ``[N, 1, 8, 8]`` with
        values 0..16 (uint8), split by :func:`evalkit.data.digits_split` (the same rows as
        ``load_data("digits")``); or a ``.npy``, ``.npz`` or ``.pt`` file holding a uint8 (or
        other integer) array, chosen in containers like :func:`evalkit.data.load_data` does
        (the array named after ``split``, or ``"x"`` / ``"data"``); or an array itself.
    layout : {"NHW", "NHWC", "NCHW"}, optional
        Axis order of the stored array; default detected (see :func:`as_images`).
    split : {"test", "train", "all"}

    Returns
    -------
    Tensor, shape (N, C, H, W), uint8 (int64 for wider integer input)
        Unscaled: the model's decoder decides the scaling. Flatten with ``x.reshape(N, -1)``
        (channel-major, the order :class:`evalkit.models.ConvVAE` uses) or pass the images
        to :func:`evalkit.estimate` directly.
    """
    if split not in SPLITS:
        raise InputError(f"Expected argument `split` to be one of {list(SPLITS)}, got {split!r}.")
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return as_images(source, layout=layout)
    if str(source) == "digits":
        counts = _digits_pixel_counts()[digits_split()[split]]
        return torch.from_numpy(counts.astype(np.uint8).reshape(-1, 1, 8, 8))
    path = Path(source)
    check_input_file(path, "image file", DataError, must_exist=False)
    if not path.is_file():
        raise DataError(f"image file {path} does not exist; give a .npy, .npz or .pt path, or 'digits'.")
    if path.suffix.lower() not in (".npy", ".npz", ".pt", ".pth"):
        raise DataError(f"{path} has an unsupported suffix '{path.suffix}'; images are read from .npy, .npz or .pt.")
    return as_images(_read_file(path, split), layout=layout, name=str(path))



__all__ = ["DIGITS_LEVELS", "LAYOUTS", "as_images", "check_discrete_data", "load_images", "rescale_levels"]
