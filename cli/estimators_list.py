"""``evalkit estimators``: list the estimator names with one line each."""
from __future__ import annotations

import click

from .main import main


@main.command("estimators")
def estimators_command():
    """List the estimators that -e/--estimator accepts.

    Any order works for JVI: jvi1, jvi2, ..., jviM (M < k).
    """
    from evalkit import estimators

    names = estimators.available()
    width = max(len(name) for name in names)
    for name in names:
        click.echo(f"{name.ljust(width)}  {estimators.get(name).summary}")
