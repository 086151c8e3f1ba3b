"""Output formats chosen from file names: one rule for the CLI and the Python writers.

A file's extension names its format (``.json``, ``.csv``, ``.md``, ``.tex``, ``.txt``); an
explicit format must agree with it. Other extensions (or none) take the explicit format, or the
default one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

from ..errors import InputError

#: Format named by each recognised file extension.
FORMAT_BY_SUFFIX = {".json": "json", ".csv": "csv", ".md": "markdown", ".tex": "latex", ".txt": "table"}


def format_for_path(path: Union[str, os.PathLike, None], fmt: Optional[str] = None, *, default: str = "table",
                    allowed: Optional[Sequence[str]] = None, what: str = "output") -> str:
    """The format to write ``path`` in: ``fmt`` if given, else the one its extension names, else ``default``.

    Parameters
    ----------
    path : str or PathLike or None
        The output file (``None``: standard output, where only ``fmt``/``default`` count).
    fmt : str, optional
        An explicitly requested format (``--format``); must agree with a recognised extension.
    default : str
        The format when neither ``fmt`` nor the extension says.
    allowed : sequence of str, optional
        Formats this output can be written in; a recognised extension outside them is an error.
    what : str
        How the output is named in errors (e.g. ``"--output"``).

    Raises
    ------
    InputError
        When ``fmt`` and the extension disagree, or the extension names a format not ``allowed``.
    """
    suffix = Path(os.fspath(path)).suffix.lower() if path is not None else ""
    named = FORMAT_BY_SUFFIX.get(suffix)
    if fmt is not None and named is not None and fmt != named:
        raise InputError(f"{what} {os.fspath(path)!r} ends in {suffix} ({named}) but the format asked for is {fmt}; "
                         f"drop the format option or name the file with the matching extension")
    chosen = fmt or named or default
    if allowed is not None and chosen not in allowed:
        raise InputError(f"{what} {os.fspath(path)!r} would be written as {chosen}, which it does not support; "
                         f"use one of the extensions for {', '.join(allowed)}")
    return chosen
