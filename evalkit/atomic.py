"""File output that respects the file system: every regular file evalkit writes appears whole or not at all.

What an output path names decides how it is written:

* a regular file, or a name that does not exist yet: written to a temporary sibling in the same
  directory, flushed and fsynced, then renamed over the destination with :func:`os.replace`
  (atomic on POSIX and Windows on one file system). A crash leaves at most a stray hidden
  ``.tmp`` file, never a truncated output;
* a symbolic link: followed; the file it points to is replaced atomically as above and the link
  stays a link (a dangling link gets its target created);
* ``-``, ``/dev/stdout``, a FIFO or a character device (``/dev/null``, a terminal): written
  directly, without a temporary file or a rename (renaming would replace the device node or
  the pipe with a regular file);
* anything else (a directory, a socket, a block device, a symlink loop): refused with an
  :class:`~evalkit.errors.OutputError`; nothing but a regular file is ever replaced.

Missing directories above an output (a file or a report directory, from Python or the command
line) are created when it is written and removed again if that fails; :func:`check_writable`
checks before any work that the nearest existing ancestor is a writable directory.

A write error (a full disk, ``ENOSPC`` from ``/dev/full``, an I/O error) is an
:class:`~evalkit.errors.OutputError` naming the path and the reason, and leaves no partial file.
:func:`atomic_directory` stages a new output directory under a hidden name and renames it into
place when complete, so that a report directory appears whole or not at all.

The outputs of one run appear together or not at all: an :class:`OutputGroup`
(:func:`output_group`) stages every file and new directory first and commits them together at
the end, putting back what it had replaced when a later one fails. And no output may name an input
of the run, even with ``overwrite`` (:func:`evalkit.output.files.check_outputs_are_not_inputs`).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from .errors import OutputError

PathLike = Union[str, os.PathLike]

STDOUT = "-"
"""The output name that means standard output (``-o -``)."""


def is_stream(path: PathLike) -> bool:
    """Whether ``path`` is written directly (stdout, a FIFO, a character device), not by rename."""
    if str(path) == STDOUT:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def output_key(path: PathLike) -> str:
    """What ``path`` writes to, for spotting two outputs that would write to one place.

    ``"<stdout>"`` for ``-`` and for any name of standard output (``/dev/stdout``,
    ``/dev/fd/1``); otherwise the absolute path with symbolic links followed (a symlink loop is
    left as it is; :func:`check_writable` refuses it).
    """
    if str(path) == STDOUT:
        return "<stdout>"
    real = os.path.realpath(path)
    if real == os.path.realpath("/dev/stdout") and os.path.exists("/dev/stdout"):
        return "<stdout>"
    return real


def check_writable(path: PathLike, *, overwrite: bool = False) -> Path:
    """Check before any work that ``path`` can be written; return it as a Path.

    Raises :class:`OutputError` when the file exists and ``overwrite`` is false, when it is not
    a regular file (a directory, a socket...), or when the nearest existing ancestor of its
    directory is not a writable directory: missing ones are made on writing (and removed if that
    fails), the one rule for every output. A FIFO, a character device and ``-`` are always writable.
    """
    path = Path(path)
    if str(path) == STDOUT:
        return path
    real = _real_path(path)
    mode = _mode(real)
    if mode is not None:
        if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            return path
        if stat.S_ISDIR(mode):
            raise OutputError(f"output path {str(path)!r} is a directory; give a file name")
        if not stat.S_ISREG(mode):
            raise OutputError(f"output path {str(path)!r} is a {_kind(mode)}, not a regular file; "
                              "evalkit replaces only regular files, so give a file name")
        if not overwrite:
            raise OutputError(f"output file {str(path)!r} already exists; pass --overwrite (overwrite=True) to replace it")
    parent = real.parent if str(real.parent) else Path(".")
    ancestor = parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent  # the directories in between are created on writing
    if not ancestor.is_dir():
        raise OutputError(f"{str(ancestor)!r} is not a directory, so {str(path)!r} cannot be created; choose another location")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        what = (f"output directory {str(parent)!r} is not writable" if ancestor == parent else
                f"directory {str(ancestor)!r} is not writable, so {str(path)!r} cannot be created")
        raise OutputError(f"{what}; choose another location")
    return path


@contextlib.contextmanager
def atomic_path(path: PathLike, *, overwrite: bool = False, group: Optional["OutputGroup"] = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success it becomes ``path`` (see the module docstring).

    Use for writers that want a file name (``torch.save``, ``fig.savefig``). On an exception
    the temporary file is removed and ``path`` is left untouched; an ``OSError`` while writing,
    syncing or renaming becomes an :class:`OutputError`. With ``group`` the file is only staged:
    it appears when the group commits, together with the group's other outputs.
    """
    if group is not None:
        with group.stage(path, overwrite=overwrite) as tmp:
            yield tmp
        return
    with output_group() as own, own.stage(path, overwrite=overwrite) as tmp:
        yield tmp


def atomic_write_bytes(path: PathLike, data: bytes, *, overwrite: bool = False,
                       group: Optional["OutputGroup"] = None) -> Path:
    """Write ``data`` to ``path`` atomically (directly for stdout, a FIFO, a device); return the path.

    With ``group``, staged: written when the group commits (:class:`OutputGroup`).
    """
    if group is None:
        path = check_writable(path, overwrite=overwrite)
        if is_stream(path):
            _write_stream(path, data)
            return path
    with atomic_path(path, overwrite=overwrite, group=group) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, *, overwrite: bool = False,
                      group: Optional["OutputGroup"] = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (staged in ``group`` when given); return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite, group=group)


@contextlib.contextmanager
def atomic_directory(out: PathLike, *, group: Optional["OutputGroup"] = None) -> Iterator[Path]:
    """Yield the directory to fill; a new ``out`` appears whole, when the block ends, or not at all.

    If ``out`` does not exist, the files go to a hidden sibling ``.<name>.<random>.tmp`` that is
    renamed to ``out`` at the end; on an exception (or Ctrl-C) the staging directory and any
    parent directories created for it are removed. An existing directory is filled in place
    (each file is still atomic). With ``group`` the rename waits for the group's commit, and the
    files staged in the same group inside an existing ``out`` appear together.
    """
    if group is not None:
        with group.directory(out) as stage:
            yield stage
        return
    with output_group() as own, own.directory(out) as stage:  # a group of one: committed when the block ends
        yield stage


class OutputGroup:
    """The outputs of one run, staged now and committed together: all of them appear, or none.

    Stage files with ``atomic_path(path, group=g)`` / ``atomic_write_text(..., group=g)`` and new
    directories with ``atomic_directory(out, group=g)``; nothing is visible until :meth:`commit`.
    It renames every staged file over its destination (a file it replaces is first kept under a
    hidden hard link beside it), then every new directory into place, then writes the bytes of
    the streams (stdout, a FIFO, a device: they cannot be taken back, so they go last). If any
    step fails, what was done is undone: replaced files get their old content back, new files and
    directories are removed; the error is an :class:`OutputError` naming the output. Use it
    through :func:`output_group`. Nothing but a regular file is ever replaced
    (:func:`check_writable` runs when a file is staged).
    """

    def __init__(self) -> None:
        self._files: List[Tuple[Path, Path, Path]] = []  # (temporary, destination, path as given)
        self._directories: List[Tuple[Path, Path, List[Path]]] = []  # (stage, destination, parents made)
        self._streams: List[Tuple[Path, Path, Path]] = []  # (path as given, temporary, private directory)
        self._made: List[Path] = []  # directories made for staged files, in the order made
        self._targets: set = set()

    @contextlib.contextmanager
    def stage(self, path: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
        """Yield a temporary file to write for ``path``; it becomes ``path`` when the group commits."""
        path = check_writable(path, overwrite=overwrite)
        key = output_key(path)
        if key in self._targets:
            raise OutputError(f"two outputs name the same file {str(path)!r}; give each its own name")
        self._targets.add(key)
        if is_stream(path):
            directory = Path(tempfile.mkdtemp(prefix="evalkit-"))
            tmp = directory / path.name.replace(os.sep, "_")
            try:
                yield tmp
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
            self._streams.append((path, tmp, directory))
            return
        real = _real_path(path)
        self._make_parents(path, real)
        tmp = _temporary_sibling(path, real)
        try:
            try:
                yield tmp
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise _write_error(path, exc) from None
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        self._files.append((tmp, real, path))

    def _make_parents(self, path: Path, real: Path) -> None:
        """Make the missing directories above ``real``; a discard or a failed commit removes them."""
        missing = _missing_ancestors(real)
        try:
            for directory in reversed(missing):  # outermost first
                directory.mkdir()
                self._made.append(directory)
        except OSError as exc:
            raise _write_error(path, exc) from None

    @contextlib.contextmanager
    def directory(self, out: PathLike) -> Iterator[Path]:
        """Yield the directory to fill: ``out`` if it exists, else a hidden stage renamed to it on commit."""
        out = Path(out)
        if out.is_dir():
            yield out
            return
        created = _missing_ancestors(out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        except OSError as exc:
            _remove_empty(created)
            raise _write_error(out, exc) from None
        try:
            yield stage
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            _remove_empty(created)
            raise
        self._directories.append((stage, out, created))

    def commit(self) -> None:
        """Put every staged output in place, or, if one fails, none (see the class docstring)."""
        done: List[tuple] = []
        keep_old = len(self._files) + len(self._directories) + len(self._streams) > 1
        current: PathLike = "."
        try:
            for tmp, real, shown in self._files:
                current = shown
                old = _keep_a_link(real) if keep_old and _is_regular(real) else None
                os.replace(tmp, real)
                done.append(("file", real, old))
            for parent in dict.fromkeys(real.parent for _, real, _ in self._files):
                _fsync_directory(parent)
            for stage, out, created in self._directories:
                current = out
                os.chmod(stage, 0o777 & ~_current_umask())
                os.rename(stage, out)
                done.append(("directory", out, created))
                _fsync_directory(out.parent)
            for shown, tmp, _ in self._streams:
                current = shown
                _write_stream(shown, tmp.read_bytes())
        except BaseException as exc:
            _undo(done)
            self.discard()
            if isinstance(exc, OSError):
                raise _write_error(current, exc) from None
            raise
        for kind, target, old in done:
            if kind == "file" and old is not None:
                with contextlib.suppress(OSError):
                    old.unlink()
        self._made = []  # committed: the directories made for the files stay
        self.discard()

    def discard(self) -> None:
        """Remove everything staged and not committed (temporary files, stages, the parents made for them)."""
        for tmp, _, _ in self._files:
            with contextlib.suppress(OSError):
                tmp.unlink()
        for stage, _, created in self._directories:
            shutil.rmtree(stage, ignore_errors=True)
            _remove_empty(created)
        for _, _, directory in self._streams:
            shutil.rmtree(directory, ignore_errors=True)
        _remove_empty(self._made[::-1])
        self._files, self._directories, self._streams, self._made = [], [], [], []


@contextlib.contextmanager
def output_group() -> Iterator[OutputGroup]:
    """Yield an :class:`OutputGroup`; commit it when the block ends, discard it on an exception.

    Examples
    --------
    >>> with output_group() as group:                                          # doctest: +SKIP
    ...     atomic_write_text("summary.json", text, group=group)
    ...     atomic_write_text("per_example.csv", table, group=group)           # both appear, or neither
    """
    group = OutputGroup()
    try:
        yield group
    except BaseException:
        group.discard()
        raise
    group.commit()


# ----------------------------------------------------------------------------------------------


def _write_stream(path: Path, data: bytes) -> None:
    try:
        if str(path) == STDOUT:
            sys.stdout.flush()
            out = getattr(sys.stdout, "buffer", None)
            if out is None:
                sys.stdout.write(data.decode("utf-8"))
            else:
                out.write(data)
            sys.stdout.flush()
            return
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    except OSError as exc:
        raise _write_error(path, exc) from None


def _write_error(path: PathLike, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    return OutputError(f"cannot write {str(path)!r} ({reason}); free space or choose another location, "
                       "nothing was written there")


def _real_path(path: Path) -> Path:
    """``path`` with symbolic links followed (a dangling link gives its target); refuses loops."""
    if not path.is_symlink():
        return path
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == 40 or "loop" in str(exc).lower():  # ELOOP
            raise OutputError(f"output path {str(path)!r} is a symbolic link loop; give a file name") from None
    return Path(os.path.realpath(path))


def special_file_kind(path: PathLike) -> Optional[str]:
    """``"a FIFO (named pipe)"``, ``"a socket"``, ``"a character device"`` or ``"a block device"``
    when ``path`` (links followed) is one, else None (a regular file, a directory, or nothing)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return None


def check_input_file(path: PathLike, what: str, error: type = OutputError, *, directory_ok: bool = False,
                     must_exist: bool = True) -> Path:
    """Refuse at once, with one sentence, an input that is not a regular file; return it as a Path.

    Opening a FIFO blocks until a writer comes (forever, in practice), and a socket or a device
    is not a file that can be read again to resume or to hash, so evalkit reads inputs only from
    regular files (a symbolic link to one is fine). ``what`` names the input as the user gave it
    (``"checkpoint"``, ``"data file"``, ``"cache shard"``); ``error`` is the evalkit error class
    to raise; ``directory_ok`` accepts a directory (a checkpoint saved as a directory);
    ``must_exist=False`` leaves a missing path to the caller's own message.
    """
    path = Path(path)
    kind = special_file_kind(path)
    if kind is not None:
        raise error(f"{what} {str(path)!r} is {kind}, not a regular file; evalkit reads inputs only from regular "
                    "files (a pipe or a device would block or could not be read again), so give a file's path")
    if path.is_dir() and not directory_ok:
        raise error(f"{what} {str(path)!r} is a directory, not a file; give the path of a file in it")
    if must_exist and not path.exists():
        raise error(f"{what} {str(path)!r} does not exist; check the path")
    return path


def _mode(path: Path):
    try:
        return os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # not there (an ancestor may be a file: checked next)
        return None
    except OSError as exc:
        raise OutputError(f"cannot use output path {str(path)!r} ({exc.strerror or exc}); give another file name") from None


def _kind(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


def _remove_empty(directories: List[Path]) -> None:
    for directory in directories:  # deepest first
        with contextlib.suppress(OSError):
            directory.rmdir()


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


def _missing_ancestors(out: Path) -> List[Path]:
    """The ancestors of ``out`` that do not exist yet, deepest first (made for it, removed on failure)."""
    created: List[Path] = []
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        created.append(ancestor)
        ancestor = ancestor.parent
    return created


def _temporary_sibling(path: Path, real: Path) -> Path:
    """A new empty hidden file beside ``real``, with the permissions a plain open() would give."""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    os.close(fd)
    # mkstemp creates the file private (0600); outputs get the permissions a plain open() would.
    os.chmod(tmp_name, 0o666 & ~_current_umask())
    return Path(tmp_name)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _keep_a_link(real: Path) -> Path:
    """A hidden second name for the file at ``real`` (a hard link; a copy where links are not supported)."""
    while True:
        old = real.parent / f".{real.name}.{secrets.token_hex(6)}.old"
        try:
            os.link(real, old)
            return old
        except FileExistsError:
            continue
        except OSError:
            shutil.copy2(real, old)
            return old


def _undo(done: List[tuple]) -> None:
    """Undo committed steps, last first: old files back from their links, new files and directories removed."""
    for kind, target, extra in reversed(done):
        with contextlib.suppress(OSError):
            if kind == "directory":
                shutil.rmtree(target)
                _remove_empty(extra)
            elif extra is not None:
                os.replace(extra, target)
            else:
                target.unlink()
