"""The ``evalkit`` command: a click group whose sub-commands live one per module."""
from __future__ import annotations

import click

import evalkit
from evalkit import _interrupts


class _Main(click.Group):
    """The ``evalkit`` group; run from the command line (no ``args``), a signal at any moment ends
    it cleanly with 130 / 143 (:mod:`evalkit._interrupts`)."""

    def main(self, args=None, *rest, **kwargs):
        if args is not None:  # called from Python (click's CliRunner): no process-wide exits
            return super().main(args, *rest, **kwargs)
        with _interrupts.command_line():
            return super().main(args, *rest, **kwargs)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(evalkit.__version__, prog_name="evalkit")
def main() -> None:
    """Honest log p(x) for latent-variable models: estimates, error bars and diagnostics over K."""


def _register() -> None:
    # Sub-commands register themselves here; each module holds one command.
    from . import estimate, estimators_list  # noqa: F401  (imports attach the commands)

    for name in ("sweep", "report", "bdmc", "train"):
        try:
            __import__(f"cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"cli.{name}":
                raise


_register()
_interrupts.imports_done()
