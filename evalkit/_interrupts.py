"""Ctrl-C (SIGINT) and SIGTERM in the ``evalkit`` command line: one clean exit, 130 or 143, at any moment.

Standard library only, so that the command line installs it before torch is imported (the
import of evalkit and torch is the first seconds of every run). One handler serves both
signals; what it does depends on where the process is:

``importing`` / ``parsing``
    the command line is importing its modules or parsing options: nothing has been read or
    written, so the process writes ``interrupted`` and ends at once (``os._exit``); raising
    KeyboardInterrupt there would leave half-imported modules and a traceback.
``command``
    a command is running: the signal becomes :class:`KeyboardInterrupt` (SIGINT) or
    :class:`Terminated` (SIGTERM, a subclass) in the main thread, so that every ``finally``
    runs as the exception unwinds: worker threads stop after their current call and are joined,
    temporary files and staged directories are removed, finished cache shards are kept. The CLI
    prints the one line saying what was kept (:func:`evalkit_cli.common.interrupted_message`).
``unwinding``
    a second signal while the first one unwinds is recorded, not raised: raising again would
    cut a cleanup short (a temporary file left, a worker not joined). The process still ends
    with 130 / 143 as soon as the unwinding is over, which takes at most the model calls in
    flight.
``done``
    the command has finished and its outputs are complete: the process ends at once, silently.
``idle``
    not the command line (the package imported by a program or a test): the handler that was
    there before runs.

After an interrupt the command line ends with :func:`exit_now` (``os._exit`` once stdout and
stderr are flushed) rather than through the interpreter's shutdown: by then every output is
either whole or removed and every Python worker thread is joined, but torch's native thread
pools are still alive, and destroying them while the interpreter finalises aborts the process
with ``terminate called without an active exception`` (exit -6) about half the time. Nothing
is left for the shutdown to do (evalkit registers no ``atexit`` hooks), so skipping it loses
nothing.
"""
from __future__ import annotations  # annotations stay strings: no typing import

# Only modules the interpreter has loaded before any user code (and _signal, the C half of
# signal, without its enum import): this module is imported first thing by evalkit/__init__,
# and an import that takes a while on a busy machine (signal's enum, typing, contextlib) is a
# window where Ctrl-C still gives a traceback.
import _signal as signal
import os
import sys

__all__ = ["Terminated", "guard_imports", "imports_done", "command_line", "command", "exit_code", "exit_now"]

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that the same cleanup runs."""


_state = {"phase": None, "code": None, "previous": {}}


def _handler(signum, frame) -> None:
    phase = _state["phase"]
    code = EXIT_CODES[signum]
    if phase in ("importing", "parsing"):
        exit_now(code, "interrupted")
    if phase == "done":
        exit_now(code)
    if phase == "unwinding":
        return
    if phase == "command":
        _state.update(phase="unwinding", code=code)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    previous = _state["previous"].get(signum)  # idle: not evalkit's command line
    if callable(previous):
        return previous(signum, frame)
    signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    signal.raise_signal(signum)


def _install(phase: str) -> bool:
    """Handle both signals (main thread only: elsewhere signal.signal raises ValueError)."""
    try:
        for signum in EXIT_CODES:
            if signal.getsignal(signum) is not _handler:  # first time, or reset since (see _handler)
                _state["previous"][signum] = signal.signal(signum, _handler)
    except ValueError:
        return False
    _state["phase"] = phase
    return True


def guard_imports(*, command_line: Optional[bool] = None) -> None:
    """From here until :func:`imports_done`, SIGINT / SIGTERM end the process at once, cleanly.

    Called first thing by ``evalkit/__init__`` (where it acts only when this process is
    ``python -m evalkit`` or the ``evalkit_cli`` package is importing evalkit) and by ``evalkit_cli``'s ``__init__``
    (the console script's first import).
    """
    if command_line is None:
        command_line = _is_command_line()
    if command_line and _state["phase"] in (None, "idle"):
        _install("importing")


def _is_command_line() -> bool:
    # ``python -m evalkit`` (or ``torchrun -m evalkit``): while runpy imports the package,
    # sys.argv[0] is "-m" (documented); the evalkit_cli package sets COMMAND_LINE before importing evalkit.
    return _is_entry_point() or bool(getattr(sys.modules.get("evalkit_cli"), "COMMAND_LINE", False))


def _is_entry_point() -> bool:
    """Whether this process is ``python -m evalkit`` or the ``evalkit`` console script."""
    argv = getattr(sys, "orig_argv", [])
    as_module = any(a == "-m" and b == "evalkit" for a, b in zip(argv, argv[1:]))
    return as_module or os.path.basename(sys.argv[0] if sys.argv else "") in ("evalkit", "evalkit.exe")


def imports_done() -> None:
    """The command line's imports are over: in a process that is not an entry point (a test
    importing :mod:`evalkit_cli`), signals go back to the previous handlers until a command starts."""
    if _state["phase"] == "importing" and not _is_entry_point():
        _state["phase"] = "idle"


class command_line:
    """``with command_line():`` the whole of one command-line run (option parsing included); after
    an interrupt the process ends here with :func:`exit_now` and 130 / 143."""

    def __enter__(self) -> None:
        _install("parsing")

    def __exit__(self, kind, error, traceback) -> None:
        if _state["code"] is not None and (kind is None or issubclass(kind, SystemExit)):
            exit_now(_state["code"])
        _state["phase"] = "done"
        if kind is None or issubclass(kind, SystemExit):
            # The command is over and its outputs are whole: end the process here. The interpreter's
            # finalisation (torch's teardown included) takes a while and resets the signal handlers
            # to the default, so a signal then killed a finished run with -2 / -15.
            code = getattr(error, "code", 0)
            if isinstance(code, str):  # SystemExit("message"): Python would print it and exit 1
                exit_now(1, code)
            exit_now(int(code or 0))


class command:
    """``with command():`` the body of a command: a signal raises KeyboardInterrupt / :class:`Terminated` here."""

    def __enter__(self) -> None:
        self.before = _state["phase"]
        _state["code"] = None
        self.installed = _install("command")

    def __exit__(self, kind, error, traceback) -> None:
        if not self.installed:
            return
        if self.before != "parsing":  # not the command line (click's CliRunner, a program): as it was
            _state.update(phase=self.before or "idle", code=None)
        elif _state["phase"] == "command":
            _state["phase"] = "done"


def exit_code(error: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 143 for SIGTERM (the shell's 128 + signal number)."""
    return 143 if isinstance(error, Terminated) or _state["code"] == 143 else 130


def exit_now(code: int, line: Optional[str] = None) -> None:
    """Flush stdout and stderr, write ``line`` (if any) and end the process with ``code`` at once."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing more can reach it
            pass
    if line is not None:
        try:
            os.write(2, (line + "\n").encode())
        except OSError:
            pass
    os._exit(code)
