"""The on-disk side of the log-weight cache: directory, lock, manifest, shards and their checksums.

Layout of a cache directory (see :mod:`evalkit.sampling.cache` for what it is for)::

    manifest.json              format version, fingerprint, N, K, shard ranges (written atomically)
    shard-<start>-<stop>.npy   float64 log-weights of datapoints start..stop-1, shape (stop-start, K)
    shard-<start>-<stop>.sha256  sha256 of the .npy file (``sha256sum -c`` format), then its key:
                               a sha256 binding it to this cache's fingerprint
    .lock                      held (flock) by the run using the directory; never unlinked but by
                               the run holding it

Every file is written to a new temporary sibling, fsynced and renamed onto its name, so a kill
leaves whole files or none, and a symbolic link in the cache is replaced, never written
through. A shard whose checksum, key, header or shape is wrong, or that is not a regular file,
is reported (one :class:`CacheWarning`) and treated as missing.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import secrets
import stat
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import InputError, OutputError, ResourceError
from .fingerprint import CACHE_FORMAT_VERSION

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
    "code": "model code",
    "data": "data",
    "k": "k",
    "seed": "seed",
    "dtype": "dtype",
    "device": "device",
    "compile": "compile setting",
    "tf32": "tf32 setting",
}


class CacheWarning(UserWarning):
    """A cache shard was damaged (truncated, corrupted, missing its checksum) and is recomputed."""


def default_shard_size(n: int, k: int) -> int:
    """Datapoints per shard: at most 16 MiB of log-weights and at most ceil(N / 8) datapoints."""
    return max(1, min(DEFAULT_SHARD_VALUES // max(k, 1), math.ceil(n / DEFAULT_MIN_SHARDS)))


def shard_ranges(n: int, shard_size: int) -> List[Tuple[int, int]]:
    """Consecutive ``(start, stop)`` datapoint ranges of at most ``shard_size`` covering ``0..n``."""
    return [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]


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


class CacheLock:
    """The exclusive ``flock`` this run holds on ``<cache>/.lock``, from :func:`_acquire_lock` to :meth:`release`.

    The kernel releases it when the process dies (even by ``kill -9``), so a stale lock file
    never blocks a later run. Only the holder may unlink the lock file (:meth:`release` with
    ``remove=True``); a run that finds the file replaced after it locked it (the holder removed
    it meanwhile) locks the new one instead, so two runs never hold locks on two files.
    """

    def __init__(self, directory: Path, fd: Optional[int]) -> None:
        self.directory, self.fd = directory, fd

    def release(self, *, remove: bool = False) -> None:
        """Unlink the lock file first when ``remove`` (still holding it), then release the lock."""
        if self.fd is None:
            return
        try:
            if remove:
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / LOCK_NAME).unlink()
        finally:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None


def _acquire_lock(directory: Path) -> CacheLock:
    """Take the cache's lock, or raise :class:`ResourceError` when another run holds it.

    A run refused here has written nothing and removes nothing: the lock file belongs to the
    run holding it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, rely on atomic renames
        return CacheLock(directory, None)
    lock_path = directory / LOCK_NAME
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        try:
            fd = os.open(lock_path, flags, 0o644)
        except OSError as exc:
            raise OutputError(
                f"cannot write the lock file {str(lock_path)!r} ({exc.strerror}; a symbolic link or a file that "
                "is not writable); choose another --cache directory"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ResourceError(
                f"cache directory {str(directory)!r} is in use by another evalkit run; "
                "wait for it to finish or use another --cache directory"
            ) from None
        if _same_file(fd, lock_path):
            _remove_stale_temporaries(directory)
            return CacheLock(directory, fd)
        os.close(fd)  # the holder unlinked this file before releasing it: lock the current one


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _remove_stale_temporaries(directory: Path) -> None:
    # Leftovers of a killed run's atomic writes (".shard-0-8.npy.abc123.tmp"); safe under the lock.
    for path in directory.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            path.unlink()


def _remove_empty_directories(created: List[Path]) -> None:
    # Only empty directories go (rmdir refuses others); stops at the first that is not.
    with contextlib.suppress(OSError):
        for path in created:
            path.rmdir()


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


def _remove_written(directory: Path, manifest: Dict[str, Any], *, manifest_too: bool = True) -> None:
    # Only the files this run wrote into the cache it created; nothing else is touched. The
    # manifest goes only by the hand of the lock's holder (under torchrun: rank 0).
    for name in [*manifest.get("_files", []), *([MANIFEST_NAME] if manifest_too else [])]:
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
    shown = [key for key in keys if key not in ("model", "code", "data")]
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
    _write_in_cache(directory, MANIFEST_NAME, (json.dumps(body, indent=1) + "\n").encode())
    manifest["_written"] = True


def _write_in_cache(directory: Path, name: str, payload: bytes) -> None:
    """Write ``directory/name`` atomically as a regular file of the cache, never through a link.

    The bytes go to a new hidden temporary (``O_EXCL | O_NOFOLLOW``), are fsynced, and the
    temporary is renamed onto ``name``: a rename replaces a symbolic link itself, not the file
    it points to, so nothing outside the cache directory is ever written.
    """
    path = directory / name
    tmp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o644)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:  # an OSError, or Ctrl-C / SIGTERM while writing: no stray temporary
        with contextlib.suppress(OSError):
            tmp.unlink()
        if not isinstance(exc, OSError):
            raise
        raise OutputError(
            f"cannot write {str(path)!r} in the cache ({exc.strerror or type(exc).__name__}); "
            "free some space or choose another --cache directory"
        ) from None


# ----------------------------------------------------------------------------------------------
# Shards


def shard_name(start: int, stop: int) -> str:
    """File name of the shard holding datapoints ``start..stop-1``."""
    return f"shard-{start}-{stop}.npy"


def _store_shard(directory: Path, start: int, stop: int, values: np.ndarray, fingerprint: str) -> List[str]:
    """Write one shard and its checksum file, each atomically; return their names.

    The checksum file has two lines: ``<sha256 of the .npy>  <name>`` (``sha256sum -c``
    checks it) and ``key <sha256 of fingerprint, name and that digest>``, which binds the shard
    to this cache: a shard copied in from a cache of another seed or model is rejected.
    """
    name = shard_name(start, stop)
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    payload = buffer.getvalue()
    _write_in_cache(directory, name, payload)
    # The checksum goes last: a shard without one (killed in between) is simply recomputed.
    digest = hashlib.sha256(payload).hexdigest()
    text = f"{digest}  {name}\nkey {_shard_key(fingerprint, name, digest)}\n"
    _write_in_cache(directory, _checksum_name(name), text.encode())
    return [name, _checksum_name(name)]


def _shard_key(fingerprint: str, name: str, digest: str) -> str:
    return hashlib.sha256(f"{fingerprint}\n{name}\n{digest}\n".encode()).hexdigest()


def _read_problem(directory: Path, name: str, mode: int, fingerprint: str) -> Union[bytes, str]:
    """The shard's bytes when its checksum and key hold, else what is wrong with it."""
    if stat.S_ISLNK(mode):
        return "it is a symbolic link; it is replaced by a regular file"
    if not stat.S_ISREG(mode):
        return "it is not a regular file"
    try:
        payload = (directory / name).read_bytes()
        checksum_path = directory / _checksum_name(name)
        if not os.path.lexists(checksum_path):
            return "its checksum file is missing"
        if not stat.S_ISREG(os.lstat(checksum_path).st_mode):
            return "its checksum file is not a regular file"
        lines = checksum_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return f"it cannot be read ({exc})"
    digest = hashlib.sha256(payload).hexdigest()
    if not lines or lines[0].split()[:1] != [digest]:
        return "its checksum does not match (truncated or corrupted)"
    if lines[1:2] != [f"key {_shard_key(fingerprint, name, digest)}"]:
        return "its checksum is not bound to this cache (copied from another cache?)"
    return payload


def _checksum_name(name: str) -> str:
    return name[: -len(".npy")] + ".sha256"


def _load_shard(directory: Path, start: int, stop: int, k: int, fingerprint: str) -> Optional[np.ndarray]:
    """The stored shard, or None when it is absent or damaged (damage gives one warning).

    Damaged: not a regular file (a symbolic link is never read nor written through: the
    recomputed shard replaces the link itself), a checksum that does not match, a checksum not
    bound to this cache's fingerprint (a shard copied from another cache), or a bad header or shape.
    """
    name = shard_name(start, stop)
    path = directory / name
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    problem = _read_problem(directory, name, mode, fingerprint)
    payload = problem if isinstance(problem, bytes) else None
    problem = None if payload is not None else problem
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
