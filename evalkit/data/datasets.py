"""Datasets: the built-in digits data, files, binarisation and checks against a model.

Every dataset is a float32 tensor ``[N, D]`` (images are flattened). Stochastic binarisation
draws each datapoint's uniforms from its own stream keyed by ``(seed, row index in the
source)``, so a subset binarises exactly as it does inside the full dataset.
"""
from __future__ import annotations

import warnings

import os
import pickle
import zipfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..atomic import check_input_file
from ..errors import DataError, InputError
from ..noise import binarization_uniforms, check_seed

SPLITS = ("train", "test", "all")
BINARIZE = ("none", "threshold", "bernoulli")

DIGITS_SPLIT_SEED = 20240601
"""Seed of the fixed permutation that splits the 1797 digits images (see :func:`digits_split`)."""

DIGITS_TEST_FRACTION = 0.2

_CONTAINER_KEYS = ("x", "data")


def digits_split() -> dict[str, np.ndarray]:
    """Return the row indices of the digits splits.

    Rule: ``perm = numpy.random.default_rng(20240601).permutation(1797)``; ``test`` is the last
    ``round(0.2 * 1797) = 359`` entries of ``perm``, ``train`` the first 1438, each sorted;
    ``all`` is ``0..1796``.
    """
    n_images = 1797
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(n_images)
    n_test = round(DIGITS_TEST_FRACTION * n_images)
    return {
        "train": np.sort(perm[: n_images - n_test]),
        "test": np.sort(perm[n_images - n_test:]),
        "all": np.arange(n_images),
    }


def _digits_pixel_counts() -> np.ndarray:
    """The 1797 x 64 pixel counts (0..16) of scikit-learn's digits, as ``load_digits().data``.

    Read straight from the CSV file that scikit-learn ships (``sklearn/datasets/data/
    digits.csv.gz``: 64 pixels and the label per line), found without importing scikit-learn,
    whose import takes over a second, most of a CLI run on this dataset. Falls back to
    ``load_digits`` if the file is not where it has been since scikit-learn 0.18.
    """
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as handle:
                return np.loadtxt(handle, delimiter=",")[:, :-1]
    from sklearn.datasets import load_digits

    return load_digits().data


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    images = _digits_pixel_counts() / 16.0  # pixel counts 0..16 -> [0, 1]
    rows = digits_split()[split]
    return images[rows], rows


def _single_array(arrays: dict[str, np.ndarray], split: str, path: Path) -> np.ndarray:
    """Pick the array of a container (npz, dict in .pt) for ``split``."""
    if split in arrays:
        return arrays[split]
    for key in _CONTAINER_KEYS:
        if key in arrays:
            return arrays[key]
    if len(arrays) == 1 and split != "train":
        return next(iter(arrays.values()))
    raise DataError(
        f"{path} holds arrays {sorted(arrays)}; none is named '{split}', 'x' or 'data', so evalkit cannot tell "
        "which to use; save the data under one of those keys."
    )


def _read_csv(path: Path) -> np.ndarray:
    with open(path) as handle:
        first = handle.readline()
    try:
        [float(cell) for cell in first.replace(";", ",").split(",") if cell.strip()]
        skip = 0
    except ValueError:
        skip = 1  # a header line
    delimiter = ";" if first.count(";") > first.count(",") else ","
    try:
        with warnings.catch_warnings():
            # An empty file is reported below as "holds no datapoints"; numpy's own warning says less.
            warnings.filterwarnings("ignore", message="loadtxt: input contained no data", category=UserWarning)
            return np.loadtxt(path, delimiter=delimiter, skiprows=skip, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise DataError(f"{path} is not a numeric CSV file ({err}); keep only numbers, with at most one header line.") from None


def _read_file(path: Path, split: str) -> np.ndarray:
    """Read the array of ``split`` from a file; containers (npz, dict in .pt) choose by key."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            contents: object = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                contents = {key: archive[key] for key in archive.files}
        elif suffix in (".pt", ".pth"):
            contents = torch.load(path, map_location="cpu", weights_only=True)
        elif suffix == ".csv":
            contents = _read_csv(path)
        else:
            raise DataError(f"{path} has an unsupported suffix '{suffix}'; use .npy, .npz, .pt or .csv.")
    except (OSError, ValueError, zipfile.BadZipFile, RuntimeError, pickle.UnpicklingError) as err:
        if isinstance(err, DataError):
            raise
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot read {path} ({reason}); check that the file is a valid {suffix} file.") from None
    if isinstance(contents, dict):
        contents = _single_array({str(key): value for key, value in contents.items()}, split, path)
    elif split == "train":
        raise DataError(f"{path} holds one array, a single dataset; read it with the test or all split (--split test or --split all; "
                        "split='test' or 'all' in Python); the train split needs an .npz or .pt container with a 'train' array.")
    if isinstance(contents, torch.Tensor):
        contents = contents.detach().to(torch.float64).numpy() if contents.is_floating_point() else contents.numpy()
    if not isinstance(contents, np.ndarray):
        raise DataError(f"{path} holds a {type(contents).__name__}, not an array; save a tensor [N, ...] or a dict of tensors.")
    return contents


def load_data(
    source: Union[str, os.PathLike],
    *,
    split: str = "test",
    binarize: str = "none",
    seed: int = 0,
) -> torch.Tensor:
    """Load a dataset as a float32 tensor ``[N, D]``.

    Parameters
    ----------
    source : str or path
        ``"digits"`` -- scikit-learn's 8x8 digits (1797 images, 64 pixels, values /16 in
        [0, 1], split by :func:`digits_split`); or a path to ``.npy``, ``.npz`` (one array, or
        the array named after ``split``, or ``"x"`` / ``"data"``), ``.pt`` (a tensor or a dict
        of tensors, chosen like npz) or ``.csv`` (numbers, optional header line).
        Arrays ``[N, ...]`` are flattened to ``[N, D]``; a 1-D array is ``N`` datapoints of
        length 1. Values are used as stored (no rescaling).
    split : {"test", "train", "all"}
        For digits and for containers that hold ``train``/``test`` arrays. A file holding a
        single array is one dataset: ``"test"`` and ``"all"`` return it, ``"train"`` is an error.
    binarize : {"none", "threshold", "bernoulli"}
        ``"threshold"``: ``x > 0.5``. ``"bernoulli"``: ``x_bin = (u < x)`` with ``u`` uniform,
        drawn once from each datapoint's own stream ``(seed, row index in the source)`` -- fixed
        binarisation, the same for a datapoint whatever the split or subset. Needs x in [0, 1].
    seed : int
        Seed of the Bernoulli binarisation.

    Returns
    -------
    Tensor, shape (N, D), float32
    """
    if split not in SPLITS:
        raise InputError(f"Expected argument `split` to be one of {list(SPLITS)}, got {split!r}.")
    if binarize not in BINARIZE:
        raise InputError(f"Expected argument `binarize` to be one of {list(BINARIZE)}, got {binarize!r}.")
    if str(source) == "digits":
        array, rows = _load_digits(split)
    else:
        path = Path(source)
        check_input_file(path, "data file", DataError, must_exist=False)
        if not path.is_file():
            raise DataError(f"data file {path} does not exist; give a .npy, .npz, .pt or .csv path, or 'digits'.")
        array = _read_file(path, split)
        if array.dtype.kind not in "biuf":
            raise DataError(f"{path} holds {array.dtype} values; evalkit needs numbers.")
        if array.ndim == 0:
            raise DataError(f"{path} holds a single number; save an array [N, D] of datapoints.")
        if array.shape[0] == 0 or array.size == 0:
            raise DataError(f"{path} holds no datapoints (shape {tuple(array.shape)}); check the file.")
        array = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(-1, 1)
        rows = np.arange(array.shape[0])
    return _binarize(torch.from_numpy(np.asarray(array, dtype=np.float32)), binarize, check_seed(seed), rows.tolist())


def binarize(
    data: torch.Tensor,
    mode: str,
    *,
    seed: int = 0,
    indices: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Binarise a dataset, with per-datapoint random streams for the stochastic mode.

    Parameters
    ----------
    data : Tensor, shape (N, D)
    mode : {"none", "threshold", "bernoulli"}
        ``"none"``: unchanged. ``"threshold"``: ``x > 0.5``. ``"bernoulli"``: ``u < x`` with
        ``u`` uniform from the stream of ``(seed, indices[n])`` (needs values in [0, 1]).
    seed : int
    indices : LongTensor, shape (N,), optional
        Each row's index in the full dataset (default ``arange(N)``), so that a subset is
        binarised exactly as inside the full dataset.

    Returns
    -------
    Tensor, shape (N, D), float32
        ``data`` is never modified; with ``"none"`` it is returned itself when it is already a
        float32 CPU tensor.
    """
    if mode not in BINARIZE:
        raise InputError(f"Expected argument `binarize` to be one of {list(BINARIZE)}, got {mode!r}.")
    rows = list(range(data.shape[0])) if indices is None else torch.as_tensor(indices).tolist()
    if len(rows) != data.shape[0]:
        raise InputError(f"Expected `indices` with one entry per row ({data.shape[0]}), got {len(rows)}.")
    return _binarize(data, mode, check_seed(seed), rows)


def _binarize(data: torch.Tensor, mode: str, seed: int, rows: list[int]) -> torch.Tensor:
    data = data.detach().to("cpu", torch.float32)
    if mode == "none":
        return data
    if mode == "threshold":
        return (data > 0.5).float()
    finite = data[torch.isfinite(data)]
    if finite.numel() and (float(finite.min()) < 0 or float(finite.max()) > 1):
        raise DataError(
            f"binarize='bernoulli' needs values in [0, 1], got range [{float(finite.min()):g}, {float(finite.max()):g}]; "
            "rescale the data first (e.g. divide 8-bit images by 255)."
        )
    values = data.numpy().astype(np.float64)
    for position, row in enumerate(rows):
        values[position] = binarization_uniforms(seed, int(row), values.shape[1]) < values[position]
    return torch.from_numpy(values.astype(np.float32))


__all__ = ["load_data", "binarize", "digits_split", "SPLITS", "BINARIZE"]
