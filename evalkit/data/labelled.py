"""Datasets with targets: inputs ``x [N, D]`` and labels or regression targets ``y [N]``.

For Bayesian networks, whose quantities are ``log p(y | x)``. Sources:

* ``"digits"`` -- scikit-learn's 8x8 digits with their class labels 0..9, split exactly as
  :func:`evalkit.data.digits_split` (the same rows as ``load_data("digits", split=...)``);
* ``.npz`` -- arrays ``x`` and ``y`` (or ``x_<split>`` / ``y_<split>``; ``target=`` names another
  key for ``y``);
* ``.pt`` / ``.pth`` -- a dict of tensors with the same keys;
* ``.csv`` -- a header line naming the columns; ``target=`` names the target column, every other
  column is an input.

Integer targets come back as ``int64`` (class labels), floating ones as ``float32``. Whether
labels fit a model (in range for its classes, the right width) is checked where the model is
known: :func:`check_targets_for_model`.
"""
from __future__ import annotations

import functools
import os
import pickle
import zipfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .checks import check_data_for_model
from .datasets import SPLITS, digits_split
from ..atomic import check_input_file
from ..errors import DataError, InputError


@functools.lru_cache(maxsize=1)
def _digits_table() -> np.ndarray:
    """The 1797 x 65 digits table (64 pixel counts 0..16, then the label), as scikit-learn ships it."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as handle:
                return np.loadtxt(handle, delimiter=",")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.column_stack([bunch.data, bunch.target])


def _pick(arrays: dict, names: list[str], path: Path, what: str) -> np.ndarray:
    for name in names:
        if name in arrays:
            value = arrays[name]
            return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    raise DataError(f"{path} holds no {what} (looked for keys {names}, found {sorted(arrays)}); save the {what} under '{names[-1]}'.")


def _read_container(path: Path, split: str, target: Optional[str]) -> tuple[np.ndarray, np.ndarray]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        else:
            arrays = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, ValueError, zipfile.BadZipFile, RuntimeError, pickle.UnpicklingError) as err:
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot read {path} ({reason}); check that the file is a valid {suffix} file.") from None
    if not isinstance(arrays, dict):
        raise DataError(f"{path} holds a {type(arrays).__name__}; save a dict with inputs 'x' and targets 'y'.")
    if f"x_{split}" not in arrays and split == "train":
        raise DataError(f"{path} has no 'x_train' array; read it with the test or all split (--split test or --split all; split='test' or 'all' in Python) for a file holding one dataset.")
    x = _pick(arrays, [f"x_{split}", "x"], path, "inputs")
    y = _pick(arrays, [target] if target is not None else [f"y_{split}", "y"], path, "targets")
    return x, y


def _read_csv(path: Path, target: Optional[str]) -> tuple[np.ndarray, np.ndarray]:
    if target is None:
        raise DataError(f"{path} is a CSV file; name its target column with target= (CLI: --target).")
    with open(path) as handle:
        header = [cell.strip() for cell in handle.readline().replace(";", ",").split(",")]
    if target not in header:
        raise DataError(f"{path} has no column '{target}' (columns: {header[:8]}); name the target column with target=.")
    delimiter = ";" if ";" in open(path).readline() else ","
    try:
        table = np.loadtxt(path, delimiter=delimiter, skiprows=1, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise DataError(f"{path} is not a numeric CSV file below its header ({err}); keep only numbers.") from None
    column = header.index(target)
    y = table[:, column]
    if np.all(y == np.round(y)):
        y = y.astype(np.int64)
    return np.delete(table, column, axis=1), y


def load_labelled_data(
    source: Union[str, os.PathLike],
    *,
    split: str = "test",
    target: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load inputs and targets.

    Parameters
    ----------
    source : str or path
        ``"digits"`` or a ``.npz`` / ``.pt`` / ``.csv`` path (module notes).
    split : {"test", "train", "all"}
        For digits, and for containers holding ``x_<split>`` / ``y_<split>``.
    target : str, optional
        The target key (npz, pt; default ``y``) or column name (csv; required).

    Returns
    -------
    x : Tensor, shape (N, D), float32
        Digits pixels divided by 16, as :func:`evalkit.data.load_data`; files as stored.
    y : Tensor, shape (N,) (or (N, O) for multi-output regression)
        int64 for integer targets (class labels), float32 otherwise. For CSV, a target column
        of whole numbers is int64.

    Raises
    ------
    DataError
        Missing file, missing targets, row counts of x and y that differ, NaN in the inputs.
    """
    if split not in SPLITS:
        raise InputError(f"Expected argument `split` to be one of {list(SPLITS)}, got {split!r}.")
    if str(source) == "digits":
        table = _digits_table()[digits_split()[split]]
        x, y = table[:, :-1] / 16.0, table[:, -1].astype(np.int64)
        path = Path("digits")
    else:
        path = Path(source)
        check_input_file(path, "data file", DataError, must_exist=False)
        if not path.is_file():
            raise DataError(f"data file {path} does not exist; give a .npz, .pt or .csv path, or 'digits'.")
        suffix = path.suffix.lower()
        if suffix in (".npz", ".pt", ".pth"):
            x, y = _read_container(path, split, target)
        elif suffix == ".csv":
            x, y = _read_csv(path, target)
        else:
            raise DataError(f"{path} has the suffix '{suffix}', which holds no targets; use .npz or .pt (x and y) or .csv with target=.")
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataError(f"{path} holds no datapoints (inputs of shape {tuple(x.shape)}); check the file.")
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise DataError(f"{path} has {x.shape[0]} inputs but {y.shape[0] if y.ndim else 1} targets; give one target per datapoint.")
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
        raise DataError(f"{path} holds non-numeric inputs or targets ({x.dtype}, {y.dtype}); evalkit needs numbers.")
    x_tensor = torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(x.shape[0], -1))
    y_tensor = torch.from_numpy(np.asarray(y, dtype=np.int64 if y.dtype.kind in "biu" else np.float32))
    return x_tensor, y_tensor


def check_targets_for_model(x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module) -> None:
    """Check inputs (width, NaN) and targets (labels in range, width) against a Bayesian network.

    Raises :class:`DataError` with one sentence naming the problem and the rows.
    """
    check_data_for_model(x, model)
    model.check_targets(y, x.shape[0])


__all__ = ["load_labelled_data", "check_targets_for_model"]
