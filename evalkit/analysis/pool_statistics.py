"""The first pass of a sweep: per-datapoint moments of every (estimator, k) cell, block by block.

For each block of datapoints, every (estimator, k) cell is evaluated on the ``floor(K_max / k)``
disjoint groups of k columns and reduced to its per-datapoint mean and variance over groups,
on worker threads (:func:`_cell_moments`); the block's weight diagnostics, moment ratios and
best estimate at K_max come beside them. Only these per-datapoint results outlive a block.
"""
from __future__ import annotations

import re
import time
import warnings
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch

from ..sampling.engine import _progress_bar
from ..sources import LogWeightSource
from . import diagnostics as dg
from .reference import pool_best


class _BlockStatistics(NamedTuple):
    """Per-datapoint results of one block of rows: ``{(name, k): (mean, var, groups, group_sums)}``, the pool's
    best estimate at K_max, ESS/K, k-hat and the weight-moment ratios (each of shape (rows,))."""

    moments: Dict[tuple, tuple]
    best_name: str
    best: np.ndarray
    ess_fraction: np.ndarray
    khat: np.ndarray
    r2: np.ndarray
    r3: np.ndarray


class PoolStatistics(NamedTuple):
    """The first pass over the whole pool: per-datapoint results of every block, in row order.

    ``moments[(name, k)] = (mean, var, groups, group_sums)`` over the groups of k columns (``group_sums``,
    shape (groups,): each group's estimates summed over the rows); ``best`` the least
    biased estimate at K_max (``best_name``); the weight diagnostics and moment ratios; the
    recorded warnings; seconds spent waiting for the source; the whole pool where it was kept.
    """

    moments: Dict[tuple, tuple]
    best_name: str
    best: np.ndarray
    weights: dg.WeightDiagnostics
    r2: np.ndarray
    r3: np.ndarray
    cell_warnings: list
    pool_warnings: list
    seconds_source: float
    log_weights: Optional[torch.Tensor]


def first_pass(blocks, source: LogWeightSource, cells: list, chosen: Sequence[Any], max_elements: int,
                threads: Optional[int], progress: Optional[bool]) -> PoolStatistics:
    """Run :func:`_block_statistics` on every block of the source and join the results.

    Only per-datapoint results outlive a block, so memory does not grow with
    N x K_max. The estimators' warnings are recorded here (in this thread; worker threads only add
    to the list) and issued by :func:`_issue_warnings`.
    """
    k_max = source.k
    bar = _progress_bar(progress, source.n * sum((k_max // k) * k for _, k in cells), desc="statistics")
    parts: List[_BlockStatistics] = []
    cell_warnings: list = []
    pool_warnings: list = []
    seconds_source = 0.0
    with bar:
        while True:
            t0 = time.perf_counter()
            try:
                start, block = next(blocks)
            except StopIteration:
                break
            seconds_source += time.perf_counter() - t0
            part, caught_cells, caught_pool = _block_statistics(block, cells, chosen, k_max, max_elements,
                                                                threads, bar)
            parts.append(part)
            cell_warnings += caught_cells
            pool_warnings += [(start, record) for record in caught_pool]
            del block
    moments = {key: (np.concatenate([p.moments[key][0] for p in parts]),
                     np.concatenate([p.moments[key][1] for p in parts]), groups,
                     np.sum([p.moments[key][3] for p in parts], axis=0))
               for key, (_, _, groups, _) in parts[0].moments.items()}
    weights = dg.summarize_weights(np.concatenate([p.ess_fraction for p in parts]),
                                   np.concatenate([p.khat for p in parts]), k_max, index=source.index)
    return PoolStatistics(moments, parts[0].best_name, np.concatenate([p.best for p in parts]), weights,
                           np.concatenate([p.r2 for p in parts]), np.concatenate([p.r3 for p in parts]),
                           cell_warnings, pool_warnings, seconds_source, None)


def _block_statistics(block: torch.Tensor, cells: list, chosen: Sequence[Any], k_max: int, max_elements: int,
                      threads: Optional[int], bar: Any) -> tuple:
    """``(statistics, cell warnings, pool warnings)`` of one ``[rows, K_max]`` block."""
    # The estimators name rows of the chunk of groups they were given, which means nothing to
    # the caller: their warnings are returned and issued once each, without those positions.
    with warnings.catch_warnings(record=True) as cell_warnings:
        warnings.simplefilter("always")
        moments = _cell_moments(block, cells, max_elements, threads, bar)
        # The least biased estimate at K_max (a cell already when K_max is among the ks):
        # the reference when there is no other, and the anchor of the paired gap column.
        best_name, best = pool_best(chosen, k_max, block, moments, max_elements)
    with warnings.catch_warnings(record=True) as pool_warnings:
        warnings.simplefilter("always")
        weights = dg.weight_diagnostics(block)
        r2, r3 = dg.moment_ratios(block)
    return (_BlockStatistics(moments, best_name, best, weights.ess_fraction, weights.khat, r2, r3),
            cell_warnings, pool_warnings)


#: Default upper bound on the threads of a sweep's statistical half.
_STAT_THREADS = 8


def _cell_moments(log_w: torch.Tensor, cells: list, max_elements: int, threads: Optional[int],
                  bar: Any) -> Dict[tuple, tuple]:
    """``{(name, k): (mean, var, groups, group_sums)}`` for every (estimator, k) cell, on ``threads`` threads.

    The cells are independent and numpy releases the GIL inside its loops, so on a CPU with
    spare cores they run side by side (default: torch's thread count, like the engine); each
    cell is computed by one thread alone, so the numbers do not depend on the thread count.
    Small k first: there the estimators see the most rows and cost the most. ``bar`` (a tqdm
    bar) counts the log-weights evaluated.
    """
    import threading

    n = log_w.shape[0]
    lock = threading.Lock()  # tqdm's update is not safe from several threads at once

    def run(cell):
        est, k = cell
        values = dg.evaluate_groups(log_w, k, est.fn, max_elements=max_elements)
        with lock:
            bar.update(n * values.shape[1] * k)
        # The sums over rows of each group's estimates: the dataset mean per group, whose spread over
        # the (independent) groups is the Monte Carlo SE when the rows share their columns.
        return dg.group_moments(values) + (values.shape[1], values.sum(axis=0, dtype=np.float64))

    order = sorted(cells, key=lambda cell: cell[1])
    # Each thread holds up to max_elements log-weights and the estimators' temporaries over them
    # (a few hundred MB at the default), so a many-core machine gets at most _STAT_THREADS.
    workers = max(1, min(int(threads or min(torch.get_num_threads(), _STAT_THREADS)), len(order)))
    if workers == 1:
        results = [run(cell) for cell in order]
    else:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(workers, thread_name_prefix="evalkit-sweep")
        try:
            results = list(pool.map(run, order))
        finally:  # after Ctrl-C, the cells not started are dropped; the running ones finish
            pool.shutdown(wait=True, cancel_futures=True)
    return {(est.name, k): result for (est, k), result in zip(order, results)}


# How evalkit's estimators name rows in a warning (arraykind.format_positions).


# How evalkit's estimators name rows in a warning (arraykind.format_positions).
_POSITIONS = re.compile(r" in (?:rows (?:\([\d, ]*\)|\d+)(?:, (?:\([\d, ]*\)|\d+))*(?: and \d+ more)?|the only row)")


def without_positions(records) -> List[tuple]:
    """``(category, text)`` of each distinct warning, its row positions replaced by "in some groups".

    The positions refer to a chunk of groups of one (estimator, k) cell; the table's notes name
    the datapoints whose estimates are not finite.
    """
    distinct: Dict[tuple, None] = {}
    for record in records:
        text = _POSITIONS.sub(" in some groups of k samples (the table notes name the datapoints whose "
                              "estimate is affected)", str(record.message), count=1)
        distinct.setdefault((record.category, "sweep statistics: " + text), None)
    return list(distinct)
