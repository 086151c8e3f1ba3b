"""Write an :class:`~evalkit.analysis.estimate.EstimateResult` to files, together and each atomically.

Checks run before the computation (:func:`check_outputs`, :func:`check_outputs_are_not_inputs`)
so that a run that cannot save its results fails in a second, not after an hour. The files of one
call appear together or not at all (:class:`evalkit.atomic.OutputGroup`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ..atomic import (PathLike, atomic_directory, atomic_path, atomic_write_text, check_writable, is_stream,
                      output_group, output_key)
from ..errors import OutputError


def check_outputs(paths: Dict[str, Optional[str]], *, overwrite: bool = False) -> None:
    """Raise :class:`OutputError` now if any of the named output paths cannot be written."""
    chosen = [p for p in paths.values() if p is not None]
    for path in chosen:  # first, so that a symlink loop or a socket is named before anything else
        check_writable(path, overwrite=overwrite)
    keys = [output_key(p) for p in chosen]
    if keys.count("<stdout>") > 1:
        raise OutputError(f"two outputs write to stdout ({', '.join(chosen)}); give all but one a file name")
    if len(set(keys)) != len(keys):
        raise OutputError(f"two outputs name the same file ({', '.join(chosen)}); give each its own name")
    log_weights_path = paths.get("log_weights")
    if log_weights_path is not None and Path(log_weights_path).suffix not in (".npy", ".pt"):
        raise OutputError(f"log-weights file {log_weights_path!r} must end in .npy or .pt")


def write_estimate_outputs(result, paths: Dict[str, Optional[str]], *, text: str, overwrite: bool = False) -> None:
    """Write the summary ``text``, the per-example table and the log-weights where asked: all of them or none.

    Each is staged to a temporary file and the three are committed together at the end
    (:func:`evalkit.atomic.output_group`): if one cannot be written, none appears and files they
    would have replaced keep their old content.
    """
    with output_group() as group:
        if paths.get("output") is not None:
            atomic_write_text(paths["output"], text if text.endswith("\n") else text + "\n", overwrite=overwrite,
                              group=group)
        if paths.get("per_example") is not None:
            target, table = paths["per_example"], result.per_example_table()  # *_bpd twins where D is known
            if target.endswith(".json"):
                body = table.to_json(orient="records", indent=1, double_precision=15)
            else:
                body = table.to_csv(index=False, float_format="%.17g")
            atomic_write_text(target, body, overwrite=overwrite, group=group)
        if paths.get("log_weights") is not None:
            target = paths["log_weights"]
            with atomic_path(target, overwrite=overwrite, group=group) as tmp:
                if target.endswith(".npy"):
                    with open(tmp, "wb") as fh:
                        np.save(fh, result.log_weights.numpy())
                else:
                    torch.save(result.log_weights, tmp)


def write_bdmc(report, out, *, overwrite: bool = False) -> Path:
    """Write :func:`evalkit.bdmc`'s tables (CSV, full precision) and figure (PNG, SVG) to directory ``out``.

    A new directory appears whole or not at all, and the files of an existing one together
    (:func:`evalkit.atomic.output_group`).
    """
    from .plots import plot_bdmc, save_figure

    tables = {"bdmc.csv": report.bounds.summary, "bdmc_per_datapoint.csv": report.bounds.per_datapoint,
              "importance.csv": report.importance}
    with output_group() as group, atomic_directory(out, group=group) as directory:
        for name, frame in tables.items():
            atomic_write_text(Path(directory) / name, frame.to_csv(index=False, float_format="%.17g"),
                              overwrite=overwrite, group=group)
        save_figure(plot_bdmc(report), Path(directory) / "bdmc", formats=("png", "svg"), overwrite=overwrite,
                    group=group)
    return Path(out)


def check_outputs_are_not_inputs(outputs: Sequence[Tuple[str, PathLike]], inputs: Sequence[Tuple[str, PathLike]],
                                 *, directories: Sequence[Tuple[str, PathLike]] = ()) -> None:
    """Refuse any output that would replace an input of the run, whatever ``overwrite`` says.

    Parameters
    ----------
    outputs : sequence of (name, path)
        The files the run will write, each with the option that names it (``"--output"``).
    inputs : sequence of (name, path)
        The files it reads (``"the checkpoint"``, ``"--data"``): an output may not be the same
        file, by resolved path (symbolic links followed) or by device and inode (hard links).
        An input that is a directory (a checkpoint directory) is treated as in ``directories``.
    directories : sequence of (name, path)
        Input directories (``"--cache"``), existing or not: no output may lie inside one.

    Raises
    ------
    OutputError
        One sentence naming the output option and the input. Streams (``-``, FIFOs, devices)
        replace nothing and are not compared.
    """
    folders = list(directories) + [(name, path) for name, path in inputs if os.path.isdir(path)]
    files = [(name, path) for name, path in inputs if not os.path.isdir(path)]
    for option, out in outputs:
        if out is None or is_stream(out):
            continue
        real = Path(os.path.realpath(out))
        for name, folder in folders:
            top = Path(os.path.realpath(folder))
            if real == top or top in real.parents:
                raise OutputError(f"{option} {str(out)!r} lies inside {name} {str(folder)!r}, an input of this run; "
                                  "an output never replaces an input, even with --overwrite, so choose another location")
        for name, source in files:
            if real == Path(os.path.realpath(source)) or _same_inode(out, source):
                raise OutputError(f"{option} {str(out)!r} is the same file as {name} {str(source)!r}, an input of "
                                  "this run; an output never replaces an input, even with --overwrite, so choose "
                                  "another name")



def _same_inode(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` both exist and are one file (hard links included)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
