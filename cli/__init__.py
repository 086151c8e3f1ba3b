
# The command line, installed as the package evalkit_cli (pyproject.toml; a checkout's is found
# by evalkit/_cli_package.py). evalkit's first import installs the signal guard (evalkit/_interrupts.py)
# before torch is imported, seeing this flag; the console script imports this package first.
COMMAND_LINE = True

from evalkit import _interrupts  # noqa: E402

_interrupts.guard_imports(command_line=True)
