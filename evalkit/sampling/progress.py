"""How far the current run has got, for the one line an interrupted command prints.

The engine's block loop and the cache's shard loop record ``done`` of ``total`` datapoints (and
the cache directory, where there is one); the CLI reads :func:`current` when Ctrl-C or SIGTERM
stops it, to say "interrupted; 40 of 359 datapoints done; ...". Module state, one run at a time,
reset by :func:`begin`; it holds numbers only, never data.
"""
from __future__ import annotations

from typing import Optional, Tuple

__all__ = ["begin", "advance", "current", "reset"]

_state = {"done": 0, "total": 0, "cache": None}


def begin(total: int, *, cache: Optional[str] = None) -> None:
    """A run over ``total`` datapoints starts (``cache``: its cache directory, if any)."""
    _state.update(done=0, total=int(total), cache=None if cache is None else str(cache))


def advance(done: int) -> None:
    """``done`` datapoints are finished (and, with a cache, stored)."""
    _state["done"] = int(done)


def current() -> Tuple[int, int, Optional[str]]:
    """``(done, total, cache directory or None)``; ``total`` is 0 when no run has started."""
    return _state["done"], _state["total"], _state["cache"]


def reset() -> None:
    """Forget the last run (the CLI calls this before each command)."""
    _state.update(done=0, total=0, cache=None)
