"""Atomic file output: every file evalkit writes appears whole or not at all.

A file is written to a temporary sibling in the same directory, flushed and fsynced, then
renamed over the destination with :func:`os.replace` (atomic on POSIX and Windows when source
and destination are on the same file system). A crash leaves at most a stray ``.tmp`` file,
never a truncated output.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

from .errors import OutputError

PathLike = Union[str, os.PathLike]


def check_writable(path: PathLike, *, overwrite: bool = False) -> Path:
    """Check before any work that ``path`` can be written; return it as a Path.

    Raises :class:`OutputError` when the file exists and ``overwrite`` is false, when the
    directory does not exist, or when it is not writable.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"output file {str(path)!r} already exists; pass --overwrite (overwrite=True) to replace it")
    if path.exists() and path.is_dir():
        raise OutputError(f"output path {str(path)!r} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"output directory {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {str(parent)!r} is not writable; choose another location")
    return path


@contextlib.contextmanager
def atomic_path(path: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path; on success it is fsynced and renamed to ``path``.

    Use for writers that want a file name (``torch.save``, ``fig.savefig``). On an exception
    the temporary file is removed and ``path`` is left untouched.
    """
    path = check_writable(path, overwrite=overwrite)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp creates the file private (0600); outputs get the permissions a plain open() would.
    os.chmod(tmp_name, 0o666 & ~_current_umask())
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; return the path."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is flushed (POSIX only).
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
