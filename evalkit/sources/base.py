"""The one abstraction between "where log-weights come from" and "what we compute from them".

A :class:`LogWeightSource` stands for an ``[N, K]`` matrix of log importance weights, one row
per datapoint and K i.i.d. columns (or columns shared by all rows, see ``shared_columns``). It
knows its size, the dataset indices of its rows and how to describe itself in tables, and
yields its rows block by block, so that a consumer never needs the whole matrix at once.
:func:`evalkit.estimate`, :func:`evalkit.sweep` and :func:`evalkit.sweep`'s report consume any
source without asking where it came from; a new way to make log-weights is a new subclass.
"""
from __future__ import annotations

import abc
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from ..errors import InputError

Block = Tuple[int, torch.Tensor]
"""``(start, log_w[start:start + rows])``: a block of rows, float64 on the CPU."""


class LogWeightSource(abc.ABC):
    """An ``[N, K]`` log-weight matrix, produced block by block.

    Attributes
    ----------
    n : int
        Rows (datapoints).
    k : int
        Columns (samples per datapoint).
    index : ndarray of int64, shape (n,)
        Dataset index of each row (the random stream it was drawn from), for tables.
    model_label : str or None
        What produced the weights (a checkpoint path, a class name), or None for a bare matrix.
    data_label : str
        What the rows are, e.g. ``"digits (test split), binarize=bernoulli"``.
    seed : int or None
        Seed of the random streams, or None where no randomness was involved here.
    is_main : bool
        False on the torchrun processes other than rank 0: they help produce the matrix but
        yield no rows and return no result.
    shared_columns : bool
        True when every row uses the same K samples (a Bayesian network's weight samples):
        the rows' Monte Carlo errors are then correlated.
    quantity_label : str
        What the estimators estimate per row: ``log p(x)``, ``log p(y | x)``, ``log p(D)``.
    dims : int or None
        D, the number of data dimensions of one datapoint (a model's ``data_dim``: C x H x W
        for images), which converts nats per datapoint to bits per dimension
        (:mod:`evalkit.units`); None where it is unknown (a bare matrix: pass ``dims=``).
    provenance : dict
        ``{"checkpoint_sha256", "data_sha256"}`` of the input files (:mod:`evalkit.sources.provenance`;
        None where an input is not a file); empty for a source not opened from a model and data.
    details : dict
        How the weights were drawn when that is more than importance sampling from q(z | x)
        (annealed importance sampling: its settings and acceptance rate); empty otherwise.
    """

    n: int
    k: int
    index: np.ndarray
    model_label: Optional[str] = None
    data_label: str = "log-weights"
    seed: Optional[int] = None
    is_main: bool = True
    shared_columns: bool = False
    quantity_label: str = "log p(x)"
    dims: Optional[int] = None
    provenance: Dict[str, Optional[str]] = {}  # replaced per instance by open_source, never mutated

    @abc.abstractmethod
    def blocks(self, rows: int) -> Iterator[Block]:
        """Yield ``(start, log_w[start:start + rows])`` for ``start = 0, rows, 2 rows, ...``.

        Each block is a float64 CPU tensor of shape ``(min(rows, n - start), k)``; the caller
        drops it before asking for the next, so a streaming source holds one block at a time.
        """

    def matrix(self) -> Optional[torch.Tensor]:
        """The whole ``[N, K]`` matrix, produced at once (one block of all N rows).

        None on a torchrun process other than rank 0. Use it only where the whole matrix is
        wanted anyway (to keep or save it): blocks keep memory independent of N.
        """
        parts = [block for _, block in self.blocks(self.n)]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @property
    def details(self) -> dict:
        return {}

    def for_statistics(self, rows: int, *, keep: bool = False) -> Optional[Tuple[Iterator[Block], Optional[torch.Tensor]]]:
        """``(blocks of rows, whole matrix or None)`` for a consumer that reduces block by block.

        With ``keep`` the whole matrix is produced at once (it is wanted anyway) and the blocks
        are views of it. None on a torchrun process other than rank 0, which has taken part in
        producing the matrix by the time this returns.
        """
        log_w = self.matrix() if keep else None
        if not self.is_main:
            if not keep:
                for _ in self.blocks(rows):
                    pass
            return None
        blocks = row_blocks(log_w, rows) if log_w is not None else self.blocks(rows)
        return refuse_zero_weight_rows(blocks, self), log_w

    def exact_log_marginal(self) -> Optional[np.ndarray]:
        """The exact log p(x_n) of every row (shape ``(n,)``) when the model has one, else None."""
        return None

    @property
    def run_settings(self) -> Dict[str, Any]:
        """What computed the weights (``device``, ``dtype``, ``threads``) for the provenance; empty
        for a matrix that was given (nothing was computed)."""
        return {}

    @property
    def has_exact_log_marginal(self) -> bool:
        """Whether :meth:`exact_log_marginal` gives values (checked without computing them)."""
        return False


def row_blocks(log_w: torch.Tensor, rows: int) -> Iterator[Block]:
    """``(start, log_w[start:start + rows])`` over an in-memory matrix: views, no copies."""
    for start in range(0, log_w.shape[0], rows):
        yield start, log_w[start:start + rows]


def zero_weight_rows(log_w: torch.Tensor) -> torch.Tensor:
    """Positions (LongTensor) of the rows of ``log_w`` ``[rows, K]`` whose log-weights are all ``-inf``."""
    return torch.isneginf(log_w).all(dim=1).nonzero().flatten()


def zero_weight_rows_error(rows: np.ndarray, n: int, *, model_made: bool) -> InputError:
    """The one sentence that refuses rows whose every weight is zero (all log-weights ``-inf``).

    ``rows`` are dataset indices (a model's source) or matrix rows (a matrix given as it is); such
    a row's log p(x) estimate would be ``-inf`` whatever the estimator, which is almost never
    the truth: a finite density that underflowed in float32, an infinite parameter.
    """
    shown = rows[:5].tolist()
    listed = f"{shown}" + (f" and {len(rows) - len(shown)} more" if len(rows) > len(shown) else "")
    if model_made:
        return InputError(
            f"every log-weight of the datapoints with dataset indices {listed} is -inf ({len(rows)} of {n} datapoints), "
            "so their log p(x) would be -inf; most likely a finite density underflowed in float32 (re-run with --dtype float64, "
            "dtype=torch.float64) or the model has an infinite parameter (an inf bias, a log-sigma of -inf), so fix "
            "the model or drop those datapoints."
        )
    return InputError(
        f"every log-weight of rows {listed} is -inf ({len(rows)} of {n} rows, zero weights), so their log p(x) would "
        "be -inf; drop those rows, or recompute them in float64 if a finite density underflowed in float32."
    )


def refuse_zero_weight_rows(blocks: Iterator[Block], source: "LogWeightSource") -> Iterator[Block]:
    """Yield ``blocks`` of ``source`` as they are; after the last, refuse rows whose log-weights are all ``-inf``.

    The check :func:`evalkit.estimate` and :func:`evalkit.sweep` share (a matrix given as it is
    is refused earlier, by :func:`evalkit.sources.matrix.check_log_weights`, with the same
    rule). It names every such row by its dataset index, so it raises once the pass is over
    rather than at the first block.
    """
    dead = []
    for start, block in blocks:
        rows = zero_weight_rows(block)
        if len(rows):
            dead.append(rows.numpy() + start)
        yield start, block
    if dead:
        positions = np.concatenate(dead)
        raise zero_weight_rows_error(np.asarray(source.index)[positions], source.n,
                                     model_made=source.model_label is not None or source.seed is not None)
