"""Resumable log-weight cache: a long evaluation that dies at 90% restarts at 90%.

:func:`cached_log_weights` computes the ``[N, K]`` log-weights in shards of consecutive
datapoints and stores each shard in a cache directory as soon as it is complete. Running the
same computation again loads the finished shards and computes only the missing ones. Because
the engine seeds every datapoint's random stream from ``(seed, index)``, a resumed run gives
bitwise the same matrix as an uninterrupted one.

Layout of a cache directory::

    manifest.json              format version, fingerprint, N, K, shard ranges (written atomically)
    shard-<start>-<stop>.npy   float64 log-weights of datapoints start..stop-1, shape (stop-start, K)
    shard-<start>-<stop>.sha256  sha256 of the .npy file, in ``sha256sum -c`` format
    .lock                      held (flock) by the run using the directory

Every file is written to a temporary sibling, fsynced and renamed, so a kill leaves whole
files or none. A shard whose checksum, header or shape is wrong (a truncated copy, a disk
error) is recomputed with a one-line :class:`CacheWarning`.

The **fingerprint** is a sha256 over what determines the numbers: the model (class, config,
and every parameter and buffer: name, dtype, shape, bytes), the data (dtype, shape, bytes),
K, the seed, the compute dtype, the device type, ``compile`` and (on CUDA) ``tf32``, the
evalkit version and the cache format.
Options that do not change the numbers (batch size, chunk size, memory budget, progress,
shard size) are left out, so a run may resume with different ones. A cache made for other
inputs is refused with an error that names what differs; it is never mixed.

This module holds the computation (:func:`cached_log_weights` and the loop that fills the missing
shards); the directory, lock, manifest and shard files are :mod:`evalkit.sampling.cache_store`,
the digests :mod:`evalkit.sampling.fingerprint`.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import DataError, EvalkitError, InputError
from .cache_store import (DEFAULT_MIN_SHARDS, DEFAULT_SHARD_VALUES, CacheWarning, _load_shard, _locked,  # noqa: F401
                          _make_directory, _open_manifest, _refuse_foreign, _remove_if_unused, _remove_written,
                          _store_shard, _write_manifest, default_shard_size, shard_name, shard_ranges)
from .fingerprint import CACHE_FORMAT_VERSION, _combine, fingerprint_components, model_digest, tensor_digest  # noqa: F401

PathLike = Union[str, os.PathLike]

from . import progress as run_progress
from .sizes import check_matrix_fits

logger = logging.getLogger(__name__)


def cached_log_weights(
    model: torch.nn.Module,
    data: torch.Tensor,
    k: int,
    *,
    cache_dir: PathLike,
    seed: int = 0,
    shard_size: Optional[int] = None,
    sampler: Optional[Any] = None,
    **engine_options: Any,
) -> torch.Tensor:
    """Compute ``[N, k]`` log-weights through a resumable on-disk cache.

    Parameters
    ----------
    model : Module
        A model following the protocol of :func:`evalkit.log_weights`.
    data : Tensor, shape (N, D)
        The whole dataset; row ``n`` is datapoint ``n`` (its random stream is ``(seed, n)``).
    k : int
        Importance samples per datapoint.
    cache_dir : str or path
        Directory of the cache; created if missing. It must be empty, or a cache made by an
        earlier run of the same computation.
    seed : int
        Seed of the per-datapoint random streams.
    shard_size : int, optional
        Datapoints per shard of a new cache (default: at most 16 MiB and at most 1/8 of the
        data per shard). An existing cache keeps its own shards; the value does not change
        the numbers.
    sampler : callable, optional
        Computes the shards instead of the engine (same signature) and has ``settings``, which
        join the fingerprint: annealed importance sampling (:class:`evalkit.sources.annealed.AISSampler`).
    **engine_options
        Passed to :func:`evalkit.log_weights` (``batch_size``, ``k_chunk``, ``memory_budget``,
        ``device``, ``dtype``, ``progress``). ``indices`` is not accepted: the cache always
        covers the whole of ``data``.

    Returns
    -------
    Tensor, shape (N, k), float64, on the CPU
        Bitwise identical to ``evalkit.log_weights(model, data, k, seed=seed)`` on the same
        device, however often the run was interrupted and resumed.

    Raises
    ------
    InputError
        When the directory holds a cache made for a different checkpoint, data, k, seed, dtype
        or device, or is a non-empty directory that is not an evalkit cache.
    OutputError
        When the directory cannot be created or written.
    ResourceError
        When another run is using the directory.

    Notes
    -----
    Cost over the plain engine: one sha256 pass over the model and the data, and one write
    plus fsync per shard. A damaged shard is detected by its sha256 checksum (and by
    ``numpy.load`` and the expected shape) and recomputed with one :class:`CacheWarning`.

    Examples
    --------
    >>> log_w = cached_log_weights(model, data, 5000, cache_dir="runs/cache")   # doctest: +SKIP
    """
    k, n = _checked_arguments(data, k, shard_size, engine_options)
    components = _components(model, data, k, seed, engine_options)
    if sampler is not None:  # e.g. annealed importance sampling: its settings determine the numbers too
        components["sampler"] = sampler.settings
    fingerprint = _combine(components)
    directory = Path(cache_dir)
    if directory.is_dir():
        _refuse_foreign(directory)  # before the lock file, so a refused directory is left untouched
    created = _make_directory(directory)
    with _cleaned_up_on_failure(directory, created) as manifest, _locked(directory):
        manifest.update(_open_manifest(directory, fingerprint, components, n, k, shard_size))
        return _fill(directory, manifest, model, data, k, seed, {**engine_options, "sampler": sampler})


def _checked_arguments(data: Any, k: Any, shard_size: Any, engine_options: Dict[str, Any]) -> Tuple[int, int]:
    """``(k, N)`` as ints, after refusing ``indices``, a bad k, data that is not ``[N, D]``, and a bad shard size."""
    if "indices" in engine_options:
        raise InputError("the cache covers the whole dataset; pass the rows you want as data instead of indices")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
        raise InputError(f"k must be a positive integer number of samples per datapoint, got {k!r}")
    k = int(k)
    if not isinstance(data, torch.Tensor) or data.ndim != 2:
        raise DataError("data must be an [N, D] tensor, one datapoint per row; load files with evalkit.data.load_data")
    n = int(data.shape[0])
    if n == 0:
        raise DataError("the dataset is empty (0 datapoints); check the file or the split")
    if shard_size is not None and (not isinstance(shard_size, (int, np.integer)) or shard_size <= 0):
        raise InputError(f"shard_size must be a positive number of datapoints, got {shard_size!r}")
    return k, n


def _components(model: Any, data: torch.Tensor, k: int, seed: int, engine_options: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`fingerprint_components` of a call with these engine options."""
    dtype = engine_options.get("dtype") or torch.float32
    return fingerprint_components(
        model, data, k, seed=seed, dtype=dtype, device=engine_options.get("device"),
        compile=bool(engine_options.get("compile", False)), tf32=bool(engine_options.get("tf32", False)),
    )


@contextlib.contextmanager
def _cleaned_up_on_failure(directory: Path, created: List[Path]) -> Iterator[Dict[str, Any]]:
    """Yield the (empty) manifest of this run; on failure remove what the run must not leave behind."""
    manifest: Dict[str, Any] = {}
    try:
        yield manifest
    except EvalkitError:
        # A bad input (NaN log-weights, a memory budget below one sample...) makes a new cache
        # useless: fixing it changes the fingerprint. Leave no output behind, as for any bad input.
        if manifest.get("_new"):
            _remove_written(directory, manifest)
        _remove_if_unused(directory, created)
        raise
    except BaseException:
        # Interrupted (Ctrl-C, a crash): keep every finished shard, that is what the cache is for.
        _remove_if_unused(directory, created)
        raise


def _fill(
    directory: Path,
    manifest: Dict[str, Any],
    model: torch.nn.Module,
    data: torch.Tensor,
    k: int,
    seed: int,
    engine_options: Dict[str, Any],
) -> torch.Tensor:
    n = int(manifest["n"])
    ranges: Sequence[Sequence[int]] = manifest["shards"]
    check_matrix_fits(n, k, what=f"the cached log-weights of all {n} datapoints",
                      way_out=", or drop --cache (cache=None): without it the statistics stream over blocks of data")
    out = torch.empty((n, k), dtype=torch.float64)
    missing = []
    run_progress.begin(n, cache=directory)
    for start, stop in ranges:
        loaded = _load_shard(directory, start, stop, k)
        if loaded is None:
            missing.append((start, stop))
        else:
            out[start:stop] = torch.from_numpy(loaded)
    done = n - sum(stop - start for start, stop in missing)
    run_progress.advance(done)
    if missing and len(missing) < len(ranges):
        logger.info(
            "resuming from cache %s: %d of %d shards already computed",
            directory, len(ranges) - len(missing), len(ranges),
        )
    elif not missing:
        logger.info("all %d shards loaded from cache %s", len(ranges), directory)
    if not missing:
        return out
    # One progress bar over the shards still to compute (the engine's own bar is per call).
    progress = engine_options.get("progress")
    options = {**engine_options, "progress": False}
    total = sum(stop - start for start, stop in missing) * k
    with _progress_bar(progress, total) as bar:
        for start, stop in missing:
            values = _compute_shard(model, data, k, seed, start, stop, options)
            if not manifest["_written"]:
                # Written with the first result, so that a run that fails at once leaves nothing.
                _write_manifest(directory, manifest)
            manifest["_files"] = manifest.get("_files", []) + _store_shard(directory, start, stop, values)
            out[start:stop] = torch.from_numpy(values)
            bar.update((stop - start) * k)
            done += stop - start
            run_progress.advance(done)
    return out


def _progress_bar(progress: Any, total: int):
    from .engine import _progress_bar as engine_progress_bar

    return engine_progress_bar(progress, total)


def _compute_shard(model, data, k, seed, start, stop, engine_options) -> np.ndarray:
    options = dict(engine_options)
    compute = options.pop("sampler", None) or _engine_log_weights
    log_w = compute(model, data[start:stop], k, seed=seed, indices=torch.arange(start, stop), **options)
    values = log_w.detach().to("cpu", torch.float64).numpy()
    if values.shape != (stop - start, k):
        raise RuntimeError(f"engine returned shape {values.shape} for shard {start}..{stop}, expected {(stop - start, k)}")
    return np.ascontiguousarray(values)


def _engine_log_weights(*args: Any, **kwargs: Any) -> torch.Tensor:
    # One indirection so that the engine module is imported only when a shard must be computed.
    from .engine import log_weights

    return log_weights(*args, **kwargs)

