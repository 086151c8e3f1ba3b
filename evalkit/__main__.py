"""``python -m evalkit`` (and ``torchrun -m evalkit``) runs the CLI.

Importing the package has already installed the signal guard (:mod:`evalkit._interrupts`), so
Ctrl-C or SIGTERM during the imports below ends the process with 130 / 143 and one line.
"""
from cli.main import main

if __name__ == "__main__":
    main()
