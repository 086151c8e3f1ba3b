"""The ``evalkit`` command: a click group whose sub-commands live one per module."""
from __future__ import annotations

import click

import evalkit


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(evalkit.__version__, prog_name="evalkit")
def main() -> None:
    """Honest log p(x) for latent-variable models: estimates, error bars and diagnostics over K."""


def _register() -> None:
    # Sub-commands register themselves here; each module holds one command.
    from . import estimate, estimators_list  # noqa: F401  (imports attach the commands)

    for name in ("sweep", "report", "bdmc", "compare", "train"):
        try:
            __import__(f"cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"cli.{name}":
                raise


_register()
