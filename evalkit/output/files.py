"""Write an :class:`~evalkit.analysis.estimate.EstimateResult` to files, each atomically.

Checks run before the computation (:func:`check_outputs`) so that a run that cannot save its
results fails in a second, not after an hour.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from ..atomic import atomic_path, atomic_write_text, check_writable, output_key
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
    """Write the summary ``text``, the per-example table and the log-weights where asked."""
    if paths.get("output") is not None:
        atomic_write_text(paths["output"], text if text.endswith("\n") else text + "\n", overwrite=overwrite)
    if paths.get("per_example") is not None:
        target, table = paths["per_example"], result.per_example_table()  # *_bpd twins where D is known
        if target.endswith(".json"):
            body = table.to_json(orient="records", indent=1, double_precision=15)
        else:
            body = table.to_csv(index=False, float_format="%.17g")
        atomic_write_text(target, body, overwrite=overwrite)
    if paths.get("log_weights") is not None:
        target = paths["log_weights"]
        with atomic_path(target, overwrite=overwrite) as tmp:
            if target.endswith(".npy"):
                with open(tmp, "wb") as fh:
                    np.save(fh, result.log_weights.numpy())
            else:
                torch.save(result.log_weights, tmp)


def write_bdmc(report, out, *, overwrite: bool = False) -> Path:
    """Write :func:`evalkit.bdmc`'s tables (CSV, full precision) and figure (PNG, SVG) to directory ``out``.

    A new directory appears whole or not at all (:func:`evalkit.atomic.atomic_directory`).
    """
    from ..atomic import atomic_directory
    from .plots import plot_bdmc, save_figure

    tables = {"bdmc.csv": report.bounds.summary, "bdmc_per_datapoint.csv": report.bounds.per_datapoint,
              "importance.csv": report.importance}
    with atomic_directory(out) as directory:
        for name, frame in tables.items():
            atomic_write_text(Path(directory) / name, frame.to_csv(index=False, float_format="%.17g"),
                              overwrite=overwrite)
        save_figure(plot_bdmc(report), Path(directory) / "bdmc", formats=("png", "svg"), overwrite=overwrite)
    return Path(out)
