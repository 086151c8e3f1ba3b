"""Resumable log-weight cache: a long evaluation that dies at 90% restarts at 90%.

:func:`cached_log_weights` computes the ``[N, K]`` log-weights in shards of consecutive
datapoints and stores each shard in a cache directory as soon as it is complete. Running the
same computation again loads the finished shards and computes only the missing ones. Because
the engine seeds every datapoint's random stream from ``(seed, index)``, a resumed run gives
bitwise the same matrix as an uninterrupted one.

Layout of a cache directory::

    manifest.json              format version, fingerprint, N, K, shard ranges (written atomically)
    shard-<start>-<stop>.npy   float64 log-weights of datapoints start..stop-1, shape (stop-start, K)
    shard-<start>-<stop>.sha256  sha256 of the .npy file (``sha256sum -c`` format), then its key
    .lock                      held (flock) by the run using the directory

Every file is written to a temporary sibling, fsynced and renamed onto its name (never through
a link), so a kill leaves whole files or none. A shard whose checksum, key, header or shape is
wrong (a truncated copy, a disk error, a copy from another cache) is recomputed with a one-line
:class:`CacheWarning`.

The **fingerprint** is a sha256 over what determines the numbers: the model (class, config,
and every parameter and buffer: name, dtype, shape, bytes), the model's code
(:func:`evalkit.sampling.fingerprint.code_digest`), the data (dtype, shape, bytes), K, the
seed, the compute dtype, the device type, ``compile`` and (on CUDA) ``tf32``, a sampler's
settings (AIS), the evalkit version and the cache format. Each shard's checksum is bound to it.

The **lock** (``flock`` on ``.lock``) is held for the whole run and released by the kernel when
the process ends; a run refused "in use" removes and replaces nothing.

Under **torchrun** rank 0 takes the lock and opens or creates the manifest, and broadcasts the
outcome (an error reaches every rank); each rank then loads or computes a contiguous run of
the manifest's shards (:func:`evalkit.sampling.distributed.shard` over the shard list) and rank
0 gathers the rows, then releases the lock. Shards are row ranges fixed by the manifest, so a
cache resumes with any world size, and every row equals the one-process row bitwise.
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

from .. import errors as evalkit_errors
from ..errors import DataError, EvalkitError, InputError
from . import distributed
from .cache_store import (DEFAULT_MIN_SHARDS, DEFAULT_SHARD_VALUES, MANIFEST_NAME, CacheLock,  # noqa: F401
                          CacheWarning, _acquire_lock, _load_shard, _make_directory, _open_manifest, _refuse_foreign,
                          _remove_empty_directories, _remove_written, _store_shard, _write_manifest,
                          default_shard_size, shard_name, shard_ranges)
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
    Tensor, shape (N, k), float64, on the CPU; None on a torchrun rank other than 0
        Bitwise identical to ``evalkit.log_weights(model, data, k, seed=seed)`` on the same
        device, however often the run was interrupted and resumed, with any number of processes.

    Raises
    ------
    InputError
        When the directory holds a cache made for a different checkpoint, model code, data, k,
        seed, dtype or device, or is a non-empty directory that is not an evalkit cache.
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
    context = distributed.init(engine_options.pop("device", None)) if distributed.launched_by_torchrun() else None
    if context is not None:
        engine_options = _rank_options(context, engine_options)
    components = _components(model, data, k, seed, engine_options)
    if sampler is not None:  # e.g. annealed importance sampling: its settings determine the numbers too
        components["sampler"] = sampler.settings
    fingerprint = _combine(components)
    directory = Path(cache_dir)
    run = _CacheRun(directory, fingerprint, model, data, k, seed, {**engine_options, "sampler": sampler})
    if context is None:
        return run.single(components, n, shard_size)
    return run.distributed(context, components, n, shard_size)


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


def _rank_options(context: Any, engine_options: Dict[str, Any]) -> Dict[str, Any]:
    """Engine options for one torchrun process: its device, its share of the memory, progress on rank 0."""
    from .memory import default_memory_budget

    options = {**engine_options, "device": context.device}
    if context.device.type == "cpu" and options.get("memory_budget") is None:
        options["memory_budget"] = max(1, default_memory_budget(context.device) // context.local_world_size)
    if not context.is_main:
        options["progress"] = False
    return options


class _CacheRun:
    """One run through a cache directory: lock, manifest, shards, and the clean-up of a failure.

    The run that holds the lock (rank 0 under torchrun) is the only one that creates, replaces
    or removes files; under torchrun the other ranks write the shards assigned to them while
    rank 0 holds the lock for the whole run, and remove only the shards they wrote.
    """

    def __init__(self, directory: Path, fingerprint: str, model: Any, data: torch.Tensor, k: int, seed: int,
                 engine_options: Dict[str, Any]) -> None:
        self.directory, self.fingerprint = directory, fingerprint
        self.model, self.data, self.k, self.seed, self.engine_options = model, data, k, seed, engine_options
        self.manifest: Dict[str, Any] = {}
        self.created: List[Path] = []
        self.lock: Optional[CacheLock] = None

    def single(self, components: Dict[str, Any], n: int, shard_size: Optional[int]) -> torch.Tensor:
        """The whole ``[N, K]`` matrix in this process."""
        self._open(components, n, shard_size)
        with self._cleaned_up_on_failure():
            out = torch.empty((n, self.k), dtype=torch.float64)
            self._fill(out, self.manifest["shards"], row_offset=0)
            self.manifest["_done"] = True
        return out

    def distributed(self, context: Any, components: Dict[str, Any], n: int,
                    shard_size: Optional[int]) -> Optional[torch.Tensor]:
        """Under torchrun: rank 0 locks and opens the cache, each rank fills a contiguous run of shards.

        Shards are the manifest's row ranges, fixed when the cache was made and independent of
        the number of processes, so a resume with any world size reuses every finished shard.
        """
        import torch.distributed as dist

        error = None
        if context.is_main:
            try:
                self._open(components, n, shard_size)
                if not self.manifest["_written"]:  # the other ranks' shards must belong to a manifest
                    with self._cleaned_up_on_failure():
                        _write_manifest(self.directory, self.manifest)
            except Exception as exc:  # every rank must hear of it, or the others wait in the broadcast
                error = exc
        shared = [None if error is None else (type(error).__name__, str(error)), self.manifest.get("shards"),
                  bool(self.manifest.get("_new"))]
        dist.broadcast_object_list(shared, src=0, group=context.gather_group)
        if error is not None:
            raise error
        if shared[0] is not None:
            raise getattr(evalkit_errors, shared[0][0], EvalkitError)(shared[0][1])
        ranges = shared[1]
        if not context.is_main:  # the shards this rank writes are removed by it if the run fails
            self.manifest.update({"n": n, "shards": ranges, "_new": shared[2], "_written": True, "_files": []})
        first, last = distributed.shard(len(ranges), context.rank, context.world_size)
        mine = ranges[first:last]
        offset = mine[0][0] if mine else 0
        sizes = [sum(b - a for a, b in ranges[slice(*distributed.shard(len(ranges), r, context.world_size))])
                 for r in range(context.world_size)]
        with self._cleaned_up_on_failure():
            local = torch.empty((sum(b - a for a, b in mine), self.k), dtype=torch.float64)
            try:
                self._fill(local, mine, row_offset=offset)
            except Exception as exc:  # the others wait in agree() below: tell them (fail fast), then fail here
                distributed.share_failure(distributed.describe(exc))
                raise
            distributed.agree()
            gathered = distributed.gather_rows(local, n, context, sizes=sizes)
            self.manifest["_done"] = True  # every rank has stored its shards: rank 0 may release the lock
        return gathered

    def _open(self, components: Dict[str, Any], n: int, shard_size: Optional[int]) -> None:
        """Create the directory, take the lock and read or describe the manifest."""
        if self.directory.is_dir():
            _refuse_foreign(self.directory)  # before the lock file, so a refused directory is left untouched
        self.created = _make_directory(self.directory)
        try:
            self.lock = _acquire_lock(self.directory)
        except BaseException:
            # Refused (in use): this run holds nothing and removes nothing but the empty
            # directories it made itself.
            _remove_empty_directories(self.created)
            raise
        with self._cleaned_up_on_failure():
            self.manifest.update(_open_manifest(self.directory, self.fingerprint, components, n, self.k, shard_size))

    @contextlib.contextmanager
    def _cleaned_up_on_failure(self) -> Iterator[None]:
        """On failure remove what the run must not leave behind; release the lock at the end.

        A failure (any exception: a bad input, or the model raising) removes the files this
        run wrote into a cache it created, since fixing the model or the input changes the
        fingerprint, so those shards could never be used. An interrupt (Ctrl-C, SIGTERM) keeps
        every finished shard: that is what the cache is for. The lock file goes only with a
        cache left without a manifest, unlinked while this run still holds the lock.
        """
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, Exception) and self.manifest.get("_new"):
                _remove_written(self.directory, self.manifest, manifest_too=self.lock is not None)
            self._release()
            raise
        if self.lock is not None and self.manifest.get("_done"):
            self._release()

    def _release(self) -> None:
        if self.lock is None:
            return
        unused = not (self.directory / MANIFEST_NAME).exists()
        self.lock.release(remove=unused)
        self.lock = None
        if unused:
            _remove_empty_directories(self.created)

    def _fill(self, out: torch.Tensor, ranges: Sequence[Sequence[int]], row_offset: int) -> None:
        """Load or compute the shards ``ranges`` into ``out`` (whose row 0 is datapoint ``row_offset``)."""
        directory, manifest, k = self.directory, self.manifest, self.k
        n = int(manifest.get("n", len(self.data)))
        check_matrix_fits(n, k, what=f"the cached log-weights of all {n} datapoints",
                          way_out=", or drop --cache (cache=None): without it the statistics stream over blocks of data")
        missing = []
        run_progress.begin(n, cache=directory)
        for start, stop in ranges:
            loaded = _load_shard(directory, start, stop, k, self.fingerprint)
            if loaded is None:
                missing.append((start, stop))
            else:
                out[start - row_offset:stop - row_offset] = torch.from_numpy(loaded)
        done = n - sum(stop - start for start, stop in missing)
        run_progress.advance(done)
        if missing and len(missing) < len(ranges):
            logger.info("resuming from cache %s: %d of %d shards already computed",
                        directory, len(ranges) - len(missing), len(ranges))
        elif not missing:
            logger.info("all %d shards loaded from cache %s", len(ranges), directory)
        # One progress bar over the shards still to compute (the engine's own bar is per call).
        options = {**self.engine_options, "progress": False}
        total = sum(stop - start for start, stop in missing) * k
        with _progress_bar(self.engine_options.get("progress") if missing else False, total) as bar:
            for start, stop in missing:
                values = _compute_shard(self.model, self.data, k, self.seed, start, stop, options)
                if not manifest.get("_written", True):
                    # Written with the first result, so that a run that fails at once leaves nothing.
                    _write_manifest(directory, manifest)
                stored = _store_shard(directory, start, stop, values, self.fingerprint)
                manifest["_files"] = manifest.get("_files", []) + stored
                out[start - row_offset:stop - row_offset] = torch.from_numpy(values)
                bar.update((stop - start) * k)
                done += stop - start
                run_progress.advance(done)


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

