"""The ``evalkit`` command: a click group whose sub-commands live one per module."""
from __future__ import annotations

import os
import sys

import click

import evalkit
from evalkit import _interrupts


class _Group(click.Group):
    """The command group. Run from the command line (no ``args``), a signal at any moment ends it
    cleanly with 130 / 143 (:mod:`evalkit._interrupts`). Under torchrun only rank 0 prints an
    error, and every process exits with the same code as soon as the processes have agreed on it
    (see ``errors_as_messages``)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if args is not None:  # called from Python (click's CliRunner): no process-wide exits
            return self._run(args, prog_name, complete_var, standalone_mode, **extra)
        with _interrupts.command_line():
            return self._run(args, prog_name, complete_var, standalone_mode, **extra)

    def _run(self, args, prog_name, complete_var, standalone_mode, **extra):
        from evalkit.sampling import distributed

        if not standalone_mode or not distributed.launched_by_torchrun():
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        speaks = distributed.rank() == 0
        # At once (os._exit): torchrun stops the processes still running when one exits, and a
        # process caught in the interpreter's slow shutdown would exit -15, not with the shared code.
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            from .common import share_failure

            share_failure(exc.format_message(), exc.exit_code)  # a usage error: the others wait for it
            if speaks:
                exc.show()
            _exit_now(exc.exit_code)
        except click.Abort:
            if speaks:
                click.echo("Aborted!", err=True)
            _exit_now(1)
        sys.exit(code if isinstance(code, int) else 0)


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(evalkit.__version__, prog_name="evalkit")
def main() -> None:
    """Honest log p(x) for latent-variable models: estimates, error bars and diagnostics over K."""


def _register() -> None:
    # Sub-commands register themselves here; each module holds one command.
    from . import estimate, estimators_list  # noqa: F401  (imports attach the commands)

    for name in ("sweep", "report", "bdmc", "compare", "train"):
        module = f"{__package__}.{name}"  # evalkit_cli, the name this folder is installed under
        try:
            __import__(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


_register()
_interrupts.imports_done()
