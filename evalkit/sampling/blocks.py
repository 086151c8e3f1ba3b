"""Evaluating datapoints block by block, so that memory does not grow with N or K.

Every per-datapoint statistic in evalkit (an estimate, its Monte Carlo variance, ESS, PSIS
k-hat, a sweep's group means and variances) is a function of that datapoint's row of
log-weights alone, and the engine's rows are bitwise the same however the datapoints are
batched (noise is keyed by dataset index). So :func:`evalkit.analysis.estimate` and
:func:`evalkit.analysis.sweep` compute the log-weights of a block of datapoints at a time
(:func:`engine_blocks`), reduce it to per-datapoint results and free it; the numbers are
bitwise those of one whole ``[N, K]`` matrix. :func:`block_rows` sizes the blocks and
:func:`reissue_warnings` turns the warnings raised block by block into those of one run.
"""
from __future__ import annotations

import re
import warnings
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from ..estimators.arraykind import _MAX_POSITIONS_SHOWN
from . import progress
from .engine import ROW_ALIGN
from ..errors import InputError

__all__ = ["STATISTICS_BUDGET", "BLOCK_COPIES", "block_rows", "check_block_size", "engine_blocks", "reissue_warnings"]

STATISTICS_BUDGET = 128 * 2**20
"""Bytes for one block of log-weights and the statistics' temporaries over it (:func:`block_rows`)."""

BLOCK_COPIES = 7
"""float64 copies of a block alive at the statistics' peak: the block itself plus the largest
temporaries of one estimator (measured with tracemalloc on a [256, 5000] digits block: jvi1 5.25
copies, the weight diagnostics 5.23, jvi2 4.1, dvi 3.4, iwae 2), rounded up."""


def block_rows(n: int, k: int, budget: int = STATISTICS_BUDGET) -> int:
    """Datapoints per block: as many as fit ``budget`` with the statistics' temporaries.

    ``B = budget // (BLOCK_COPIES * 8 * k)`` rounded down to a multiple of 32, at least 32 and
    at most ``n``. Multiples of 32 keep the engine's calls whole: a call lays datapoints out by
    dataset index modulo 32 (see :mod:`evalkit.sampling.engine`), so a block of fewer than 32
    datapoints would still cost a call of 32 rows. Hence above ``k = budget / (BLOCK_COPIES *
    8 * 32)`` (about 75 000 with the default budget) a block of 32 exceeds ``budget``; memory
    then grows as ``32 k`` but never beyond the whole-matrix evaluation's.

    Examples
    --------
    >>> block_rows(10_000, 5000), block_rows(10_000, 50_000), block_rows(100, 1000)
    (448, 32, 100)
    """
    rows = budget // (BLOCK_COPIES * 8 * k)
    return min(n, max(ROW_ALIGN, rows - rows % ROW_ALIGN))


def check_block_size(block_size: Any) -> None:
    """Raise :class:`InputError` unless ``block_size`` is None or a positive int."""
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer))
                                   or block_size < 1):
        raise InputError(f"block_size must be a positive number of datapoints or None (automatic), got {block_size!r}")


def engine_blocks(
    model: torch.nn.Module,
    data: torch.Tensor,
    k: int,
    *,
    seed: int,
    rows: int,
    engine_options: Dict[str, Any],
    indices: Optional[np.ndarray] = None,
    sampler: Optional[Any] = None,
) -> Iterator[Tuple[int, torch.Tensor]]:
    """Yield ``(start, log_w[start:start + rows])`` of the engine's ``[N, k]`` matrix, one block at a time.

    ``indices`` are the dataset indices of ``data``'s rows (default ``0 .. N-1``); each block is
    computed with its slice of them, so its noise, and so its rows, are bitwise those of a
    whole run. The caller drops a block before asking for the next. ``sampler``, when given,
    replaces the engine: a callable with :func:`evalkit.log_weights`'s signature (annealed
    importance sampling, :class:`evalkit.sources.annealed.AISSampler`).
    """
    from . import engine
    from .engine import _progress_bar

    def log_weights(*args: Any, **kwargs: Any) -> torch.Tensor:
        return (sampler or engine.log_weights)(*args, **kwargs)  # looked up at call time (tests patch it)

    n = data.shape[0]
    index = torch.arange(n) if indices is None else torch.as_tensor(np.asarray(indices, dtype=np.int64))
    progress.begin(n)
    if rows >= n:  # one block: the engine's own progress bar, exactly as before streaming
        block = log_weights(model, data, k, seed=seed, indices=None if indices is None else index, **engine_options)
        progress.advance(n)
        yield 0, block
        return
    # One bar over the run (the engine's bar lives for one call), advanced block by block.
    options = {**engine_options, "progress": False}
    with _progress_bar(engine_options.get("progress"), n * k) as bar:
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            block = log_weights(model, data[start:stop], k, seed=seed, indices=index[start:stop], **options)
            bar.update((stop - start) * k)
            progress.advance(stop)
            yield start, block
            del block  # freed before the next block is computed


# How evalkit's estimators name rows in a warning (arraykind.format_positions on [rows, K] input).
_ROWS_NAMED = re.compile(r"rows (\d+(?:, \d+)*)(?: and (\d+) more)?")


def reissue_warnings(caught: Sequence[Tuple[int, warnings.WarningMessage]]) -> None:
    """Issue the warnings recorded block by block as one evaluation of the whole matrix would.

    ``caught`` holds ``(start, record)``: a warning raised on the block whose first row is
    ``start``. Rows named in it ("rows 3, 17 and 2 more") are shifted by ``start``; the
    same warning from several blocks (same category and place, same text apart from the rows)
    becomes one naming the first rows of all of them and counting the rest. Other warnings are
    issued once per distinct text.
    """
    groups: Dict[tuple, list] = {}
    for start, record in caught:
        text = str(record.message)
        match = _ROWS_NAMED.search(text)
        if match is None:
            key = (record.category, record.filename, record.lineno, text, "")
            groups.setdefault(key, [record, [], 0])
            continue
        shown = [start + int(p) for p in match.group(1).split(", ")]
        key = (record.category, record.filename, record.lineno, text[: match.start()], text[match.end():])
        group = groups.setdefault(key, [record, [], 0])
        group[1] += shown
        group[2] += len(shown) + int(match.group(2) or 0)
    for (category, filename, lineno, head, tail), (record, shown, total) in groups.items():
        if total:
            listed = shown[:_MAX_POSITIONS_SHOWN]
            more = f" and {total - len(listed)} more" if total > len(listed) else ""
            text = head + "rows " + ", ".join(str(p) for p in listed) + more + tail
        else:
            text = head
        warnings.warn_explicit(text, category, filename, lineno)
