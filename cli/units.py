"""``--units nats|bpd`` and ``--dims D``: the unit of the tables, figures and reports.

Shared by ``evalkit estimate``, ``sweep`` and ``report``. JSON outputs carry both units
whatever the choice; D is the model's ``data_dim`` (``--dims`` gives it for ``--log-weights``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict

import click


def units_options(f: Callable) -> Callable:
    """Add ``--units`` and ``--dims`` to a command."""
    f = click.option("--dims", type=click.IntRange(min=1), default=None, metavar="D",
                     help="Data dimensions of one datapoint, for bits per dimension of --log-weights "
                          "(a model's own D is used otherwise).")(f)
    return click.option("--units", type=click.Choice(["nats", "bpd"]), default="nats", show_default=True,
                        help="Tables, figures and reports in nats per datapoint or bits per dimension "
                             "(bpd = -log p(x) / (D ln 2)); JSON always has both.")(f)


def units_kwargs(params: Dict[str, Any]) -> Dict[str, Any]:
    """``units`` and ``dims`` for :func:`evalkit.estimate` / ``sweep``."""
    return {"units": params.get("units", "nats"), "dims": params.get("dims")}
