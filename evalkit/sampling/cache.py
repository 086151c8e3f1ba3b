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
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..atomic import atomic_path, atomic_write_text
from ..errors import DataError, EvalkitError, InputError, OutputError, ResourceError

PathLike = Union[str, os.PathLike]

#: Version of the cache layout and fingerprint recipe; a cache of another version is refused.
CACHE_FORMAT_VERSION = 1

#: Default upper bound on one shard's size: 2**21 float64 values (16 MiB).
DEFAULT_SHARD_VALUES = 2**21

#: Default lower bound on the number of shards, so that a kill loses at most ~1/8 of the work.
DEFAULT_MIN_SHARDS = 8

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".lock"
_FORMAT_TAG = "evalkit-log-weight-cache"
_SHARD_RE = re.compile(r"^shard-(\d+)-(\d+)\.npy$")

# What each fingerprint component means to a user, for the "made for a different ..." error.
_COMPONENT_WORDS = {
    "format": "cache format",
    "evalkit": "evalkit version",
    "model": "checkpoint",
    "data": "data",
    "k": "k",
    "seed": "seed",
    "dtype": "dtype",
    "device": "device",
    "compile": "compile setting",
    "tf32": "tf32 setting",
}

logger = logging.getLogger(__name__)


class CacheWarning(UserWarning):
    """A cache shard was damaged (truncated, corrupted, missing its checksum) and is recomputed."""


def cached_log_weights(
    model: torch.nn.Module,
    data: torch.Tensor,
    k: int,
    *,
    cache_dir: PathLike,
    seed: int = 0,
    shard_size: Optional[int] = None,
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

    dtype = engine_options.get("dtype") or torch.float32
    components = fingerprint_components(
        model, data, k, seed=seed, dtype=dtype, device=engine_options.get("device"),
        compile=bool(engine_options.get("compile", False)), tf32=bool(engine_options.get("tf32", False)),
    )
    fingerprint = _combine(components)
    directory = Path(cache_dir)
    if directory.is_dir():
        _refuse_foreign(directory)  # before the lock file, so a refused directory is left untouched
    created = _make_directory(directory)
    manifest: Dict[str, Any] = {}
    try:
        with _locked(directory):
            manifest = _open_manifest(directory, fingerprint, components, n, k, shard_size)
            result = _fill(directory, manifest, model, data, k, seed, engine_options)
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
    return result


def fingerprint_components(
    model: torch.nn.Module,
    data: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: Any = None,
    compile: bool = False,
    tf32: bool = False,
) -> Dict[str, Any]:
    """The parts of a cache fingerprint: what determines the log-weights, nothing else.

    Returns
    -------
    dict
        ``format``, ``evalkit``, ``k``, ``seed``, ``dtype``, ``device``, ``compile``, ``tf32``
        as plain values; ``model`` and ``data`` as sha256 hex digests. ``tf32`` only counts on
        CUDA (it changes nothing on the CPU).
    """
    from .. import __version__

    device_type = _device_type(device)
    return {
        "format": CACHE_FORMAT_VERSION,
        "evalkit": __version__,
        "model": model_digest(model),
        "data": tensor_digest(data),
        "k": int(k),
        "seed": int(seed),
        "dtype": str(dtype).replace("torch.", ""),
        "device": device_type,
        "compile": bool(compile),
        "tf32": bool(tf32) and device_type == "cuda",
    }


def model_digest(model: Any) -> str:
    """sha256 of a model's class, config and every parameter and buffer (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    cls = type(model)
    h.update(f"class {cls.__module__}.{cls.__qualname__}\n".encode())
    original = getattr(model, "original_name", None)  # TorchScript keeps the scripted class name here
    if isinstance(original, str):
        h.update(f"original_name {original}\n".encode())
    config = _model_config(model)
    if config is not None:
        h.update(b"config ")
        h.update(json.dumps(config, sort_keys=True, default=repr).encode())
        h.update(b"\n")
    for name, tensor in _named_tensors(model):
        h.update(f"tensor {name}\n".encode())
        _update_with_tensor(h, tensor)
    return h.hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256()
    _update_with_tensor(h, tensor)
    return h.hexdigest()


def default_shard_size(n: int, k: int) -> int:
    """Datapoints per shard: at most 16 MiB of log-weights and at most ceil(N / 8) datapoints."""
    return max(1, min(DEFAULT_SHARD_VALUES // max(k, 1), math.ceil(n / DEFAULT_MIN_SHARDS)))


def shard_ranges(n: int, shard_size: int) -> List[Tuple[int, int]]:
    """Consecutive ``(start, stop)`` datapoint ranges of at most ``shard_size`` covering ``0..n``."""
    return [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]


# ----------------------------------------------------------------------------------------------
# Fingerprint helpers


def _named_tensors(model: Any) -> List[Tuple[str, torch.Tensor]]:
    # Parameters and all buffers (non-persistent ones too: they can change the numbers).
    tensors: Dict[str, torch.Tensor] = {}
    if isinstance(model, torch.nn.Module):
        for name, tensor in model.named_parameters(remove_duplicate=False):
            tensors[name] = tensor
        for name, tensor in model.named_buffers(remove_duplicate=False):
            tensors[name] = tensor
        with contextlib.suppress(Exception):
            for name, tensor in model.state_dict(keep_vars=True).items():
                if isinstance(tensor, torch.Tensor):
                    tensors.setdefault(name, tensor)
    else:
        # A protocol object that is not a Module: its tensor attributes are its state.
        for name, value in sorted(vars(model).items()):
            if isinstance(value, torch.Tensor):
                tensors[name] = value
    return sorted(tensors.items())


def _model_config(model: Any) -> Any:
    # evalkit's models describe their architecture with get_config(); others may not.
    get_config = getattr(model, "get_config", None)
    if callable(get_config):
        try:
            return get_config()
        except NotImplementedError:
            return None
    return None


def _update_with_tensor(h: "hashlib._Hash", tensor: torch.Tensor) -> None:
    t = tensor.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    t = t.to("cpu").contiguous()
    h.update(f"{t.dtype} {tuple(t.shape)}\n".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _combine(components: Dict[str, Any]) -> str:
    text = json.dumps(components, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _device_type(device: Any) -> str:
    # CPU and GPU arithmetic differ in the last bits, so shards from both are never mixed.
    from .engine import resolve_device

    return resolve_device(None if device == "auto" else device).type


# ----------------------------------------------------------------------------------------------
# Directory, lock and manifest


def _make_directory(directory: Path) -> List[Path]:
    """Create the cache directory if needed; return the directories this call created, deepest first."""
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"cache path {str(directory)!r} is a file, not a directory; give a directory for --cache")
    if directory.is_dir():
        if not os.access(directory, os.W_OK | os.X_OK):
            raise OutputError(f"cache directory {str(directory)!r} is not writable; choose another --cache directory")
        return []
    created = [directory] + [p for p in directory.parents if not p.exists()]
    try:
        directory.mkdir(parents=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputError(
            f"cannot create cache directory {str(directory)!r} ({reason}); choose another --cache directory"
        ) from None
    return created


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on the directory so two runs never write the same cache."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, rely on atomic renames
        yield
        return
    lock_path = directory / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(
            f"cannot write in cache directory {str(directory)!r} ({exc.strerror}); choose another --cache directory"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ResourceError(
                f"cache directory {str(directory)!r} is in use by another evalkit run; "
                "wait for it to finish or use another --cache directory"
            ) from None
        _remove_stale_temporaries(directory)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _remove_stale_temporaries(directory: Path) -> None:
    # Leftovers of a killed run's atomic writes (".shard-0-8.npy.abc123.tmp"); safe under the lock.
    for path in directory.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            path.unlink()


def _remove_if_unused(directory: Path, created: List[Path]) -> None:
    # A run that fails before storing anything leaves nothing behind: no lock file, and none of
    # the directories it created.
    with contextlib.suppress(OSError):
        if not (directory / MANIFEST_NAME).exists():
            with contextlib.suppress(FileNotFoundError):
                (directory / LOCK_NAME).unlink()
        for path in created:
            path.rmdir()  # only empty directories go; stops at the first that is not


def _open_manifest(
    directory: Path,
    fingerprint: str,
    components: Dict[str, Any],
    n: int,
    k: int,
    shard_size: Optional[int],
) -> Dict[str, Any]:
    """Read and check the manifest of an existing cache, or describe a new one (written later)."""
    manifest_path = directory / MANIFEST_NAME
    if manifest_path.exists():
        manifest = _read_manifest(manifest_path)
        if manifest.get("fingerprint") != fingerprint:
            raise InputError(_mismatch_message(directory, manifest.get("components", {}), components))
        _check_shards_cover(manifest, n, manifest_path)
        manifest["_written"] = True
        return manifest
    _refuse_foreign(directory)
    size = int(shard_size) if shard_size is not None else default_shard_size(n, k)
    return {
        "format": _FORMAT_TAG,
        "version": CACHE_FORMAT_VERSION,
        "fingerprint": fingerprint,
        "components": components,
        "n": n,
        "k": k,
        "shards": [list(r) for r in shard_ranges(n, size)],
        "_written": False,
        "_new": True,
        "_files": [],
    }


def _refuse_foreign(directory: Path) -> None:
    """Refuse a non-empty directory without a manifest: never write a cache into someone's files."""
    if (directory / MANIFEST_NAME).exists():
        return
    foreign = sorted(p.name for p in directory.iterdir() if p.name != LOCK_NAME and not p.name.endswith(".tmp"))
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise InputError(
            f"cache directory {str(directory)!r} is not empty ({shown}) and has no {MANIFEST_NAME}; "
            "give an empty or new directory for --cache"
        )


def _remove_written(directory: Path, manifest: Dict[str, Any]) -> None:
    # Only the files this run wrote into the cache it created; nothing else is touched.
    for name in [*manifest.get("_files", []), MANIFEST_NAME]:
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()


def _read_manifest(path: Path) -> Dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"cache manifest {str(path)!r} cannot be read ({type(exc).__name__}); delete the cache directory and run again"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT_TAG:
        raise InputError(
            f"{str(path)!r} is not an evalkit cache manifest; give an empty or new directory for --cache"
        )
    if manifest.get("version") != CACHE_FORMAT_VERSION:
        raise InputError(
            f"cache {str(path.parent)!r} has format version {manifest.get('version')!r}, this evalkit reads version "
            f"{CACHE_FORMAT_VERSION}; delete the cache directory or use another --cache directory"
        )
    return manifest


def _check_shards_cover(manifest: Dict[str, Any], n: int, path: Path) -> None:
    shards = manifest.get("shards")
    ok = isinstance(shards, list) and all(
        isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) for v in s) for s in shards
    )
    if ok:
        edges = [0] + [stop for _, stop in shards]
        ok = all(start == edges[i] and stop > start for i, (start, stop) in enumerate(shards)) and edges[-1] == n
    if not ok:
        raise InputError(
            f"cache manifest {str(path)!r} has inconsistent shard ranges; delete the cache directory and run again"
        )


def _mismatch_message(directory: Path, cached: Dict[str, Any], now: Dict[str, Any]) -> str:
    keys = [key for key in _COMPONENT_WORDS if cached.get(key) != now.get(key)] or ["inputs"]
    what = "/".join(_COMPONENT_WORDS.get(key, key) for key in keys)
    shown = [key for key in keys if key not in ("model", "data")]
    detail = ""
    if shown:
        detail = " (cached " + ", ".join(f"{key}={cached.get(key)!r}" for key in shown)
        detail += "; now " + ", ".join(f"{key}={now.get(key)!r}" for key in shown) + ")"
    return (
        f"cache directory {str(directory)!r} was made for a different {what}{detail}; "
        "use another --cache directory or delete it"
    )


def _write_manifest(directory: Path, manifest: Dict[str, Any]) -> None:
    body = {key: value for key, value in manifest.items() if not key.startswith("_")}
    atomic_write_text(directory / MANIFEST_NAME, json.dumps(body, indent=1) + "\n", overwrite=True)
    manifest["_written"] = True


# ----------------------------------------------------------------------------------------------
# Shards


def shard_name(start: int, stop: int) -> str:
    """File name of the shard holding datapoints ``start..stop-1``."""
    return f"shard-{start}-{stop}.npy"


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
    out = torch.empty((n, k), dtype=torch.float64)
    missing = []
    for start, stop in ranges:
        loaded = _load_shard(directory, start, stop, k)
        if loaded is None:
            missing.append((start, stop))
        else:
            out[start:stop] = torch.from_numpy(loaded)
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
    return out


def _progress_bar(progress: Any, total: int):
    from .engine import _progress_bar as engine_progress_bar

    return engine_progress_bar(progress, total)


def _compute_shard(model, data, k, seed, start, stop, engine_options) -> np.ndarray:
    log_w = _engine_log_weights(
        model, data[start:stop], k, seed=seed, indices=torch.arange(start, stop), **engine_options
    )
    values = log_w.detach().to("cpu", torch.float64).numpy()
    if values.shape != (stop - start, k):
        raise RuntimeError(f"engine returned shape {values.shape} for shard {start}..{stop}, expected {(stop - start, k)}")
    return np.ascontiguousarray(values)


def _engine_log_weights(*args: Any, **kwargs: Any) -> torch.Tensor:
    # One indirection so that the engine module is imported only when a shard must be computed.
    from .engine import log_weights

    return log_weights(*args, **kwargs)


def _store_shard(directory: Path, start: int, stop: int, values: np.ndarray) -> List[str]:
    """Write one shard and its checksum file, each atomically; return their names."""
    name = shard_name(start, stop)
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    payload = buffer.getvalue()
    with atomic_path(directory / name, overwrite=True) as tmp:
        tmp.write_bytes(payload)
    # The checksum goes last: a shard without one (killed in between) is simply recomputed.
    digest = hashlib.sha256(payload).hexdigest()
    atomic_write_text(directory / _checksum_name(name), f"{digest}  {name}\n", overwrite=True)
    return [name, _checksum_name(name)]


def _checksum_name(name: str) -> str:
    return name[: -len(".npy")] + ".sha256"


def _load_shard(directory: Path, start: int, stop: int, k: int) -> Optional[np.ndarray]:
    """The stored shard, or None when it is absent or damaged (damage gives one warning)."""
    name = shard_name(start, stop)
    path = directory / name
    if not path.exists():
        return None
    problem = None
    try:
        payload = path.read_bytes()
        checksum_path = directory / _checksum_name(name)
        if not checksum_path.exists():
            problem = "its checksum file is missing"
        else:
            recorded = checksum_path.read_text(encoding="utf-8").split()[:1]
            if recorded != [hashlib.sha256(payload).hexdigest()]:
                problem = "its checksum does not match (truncated or corrupted)"
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"it cannot be read ({exc})"
    if problem is None:
        try:
            values = np.load(io.BytesIO(payload), allow_pickle=False)
        except Exception as exc:  # any failure to parse means the same thing: recompute
            problem = f"it cannot be loaded ({type(exc).__name__})"
        else:
            if values.shape != (stop - start, k) or values.dtype != np.float64:
                problem = f"it holds {values.dtype} {values.shape}, expected float64 {(stop - start, k)}"
            else:
                return values
    warnings.warn(f"cache shard {str(path)!r} is damaged ({problem}); recomputing it", CacheWarning, stacklevel=4)
    return None
