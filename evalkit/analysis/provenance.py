"""Where a number came from: the software, the machine and the exact command, for every JSON output and report.

A log p(x) in a paper is reproducible only with the code and the settings that made it:
:func:`provenance` records evalkit's version (and git revision when evalkit runs from a
checkout), torch's and numpy's versions, the device (torch's name for a GPU), the CPU's vector
capability (its SIMD path decides the last bits, see the README's "Reproducible"), the worker
threads and compute dtype, the command line and the date. The inputs' sha256 digests come with
the model and data descriptions (:mod:`evalkit.sources.provenance`, ``metadata.checkpoint_sha256`` and ``data_sha256``).
"""
from __future__ import annotations

import datetime
import os
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from .._version import __version__


def provenance(settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The run's provenance as a JSON-ready dict.

    Parameters
    ----------
    settings : dict, optional
        What the source computed with (``LogWeightSource.run_settings``): ``device``, ``dtype``,
        ``threads``; None or empty for log-weights given as a matrix (nothing was computed).

    Returns
    -------
    dict
        ``evalkit_version``, ``git_revision`` (None outside a checkout; ``+dirty`` appended when
        the checkout has uncommitted changes), ``torch_version``, ``numpy_version``,
        ``python_version``, ``cpu_capability`` (``torch.backends.cpu.get_cpu_capability()``,
        e.g. ``"AVX512"``), ``command`` (the command line, shell-quoted), ``date`` (UTC, ISO
        8601) and, when the weights were computed, ``device`` (``"cpu"`` or torch's name of the
        GPU, e.g. ``"NVIDIA H100 80GB HBM3"``), ``threads`` and ``dtype``.
    """
    out: Dict[str, Any] = {
        "evalkit_version": __version__,
        "git_revision": git_revision(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": sys.version.split()[0],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "command": command_line(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if settings:
        device = settings.get("device")
        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        threads = settings.get("threads")
        out.update(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   threads=int(threads) if threads is not None else torch.get_num_threads(),
                   dtype=str(settings.get("dtype") or torch.float32).replace("torch.", ""))
    return out


def command_line() -> str:
    """The command that is running, as a user would type it again: ``evalkit estimate ...``,
    ``python -m evalkit ...`` or ``python script.py ...`` (shell-quoted)."""
    argv = list(sys.argv) or [""]
    first = Path(argv[0])
    if first.name == "__main__.py" and first.parent.name == "evalkit":
        head = ["python", "-m", "evalkit"]
    elif first.name == "evalkit":
        head = ["evalkit"]
    elif argv[0] in ("", "-c"):
        head = ["python", "-c", "..."] if argv[0] == "-c" else ["python"]
    else:
        head = ["python", argv[0]]
    return shlex.join(head + argv[1:])


@lru_cache(maxsize=1)
def git_revision() -> Optional[str]:
    """The git commit of the checkout evalkit is imported from (``+dirty`` with uncommitted
    changes), or None when evalkit is installed from a wheel or git is not there."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        run = dict(cwd=root, capture_output=True, text=True, timeout=5, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
        head = subprocess.run(["git", "rev-parse", "HEAD"], **run)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
