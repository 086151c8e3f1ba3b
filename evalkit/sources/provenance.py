"""Which input files a result came from: the sha256 of the checkpoint and of the data file.

Every JSON output and report records ``metadata.checkpoint_sha256`` and ``metadata.data_sha256``
(:func:`input_digests`), so that a number can be traced to the exact bytes it was computed
from. :func:`file_sha256` is the one place evalkit hashes a user's file.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Optional

CHUNK_BYTES = 1 << 20
"""Bytes read per step: memory stays at 1 MiB whatever the file's size."""

PROVENANCE_KEYS = ("checkpoint_sha256", "data_sha256")
"""The metadata keys :func:`input_digests` fills (None where the input is not a file)."""


def file_sha256(path: "os.PathLike[str] | str") -> str:
    """Return the sha256 hex digest of the file at ``path``, read in chunks of :data:`CHUNK_BYTES`.

    The same digest as ``sha256sum PATH``. A directory (evalkit's ``save_model`` directory
    format) is hashed as the sha256 of the ``sha256sum``-style lines ``"<digest>  <name>\\n"`` of
    its regular files in name order, so that every byte of every file counts.
    """
    path = Path(path)
    if path.is_dir():
        lines = "".join(f"{file_sha256(entry)}  {entry.name}\n" for entry in sorted(path.iterdir()) if entry.is_file())
        return hashlib.sha256(lines.encode()).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _digest_if_file(value: Any) -> Optional[str]:
    """sha256 of ``value`` when it names an existing file or directory, else None (a module, a tensor, ``"digits"``)."""
    if not isinstance(value, (str, os.PathLike)) or not os.path.exists(value):
        return None
    return file_sha256(value)


def input_digests(model: Any, data: Any) -> Dict[str, Optional[str]]:
    """``{"checkpoint_sha256": ..., "data_sha256": ...}`` for what the user passed as model and data.

    Each is the :func:`file_sha256` of the path given, or None for an in-memory model, in-memory
    data or a built-in dataset name (``"digits"``, whose bytes ship with evalkit's version).
    """
    data_digest = None if isinstance(data, str) and data == "digits" else _digest_if_file(data)
    return {"checkpoint_sha256": _digest_if_file(model), "data_sha256": data_digest}


__all__ = ["file_sha256", "input_digests", "PROVENANCE_KEYS", "CHUNK_BYTES"]
