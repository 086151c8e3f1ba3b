"""``python -m evalkit`` (and ``torchrun -m evalkit``) runs the CLI.

Importing the package has already installed the signal guard (:mod:`evalkit._interrupts`), so
Ctrl-C or SIGTERM during the imports below ends the process with 130 / 143 and one line.
"""
from evalkit import _cli_package

_cli_package.use_checkout()  # in a checkout, its own cli/ folder

from evalkit_cli.main import main  # noqa: E402

if __name__ == "__main__":
    main()
