import os
import sys

# Run from a checkout without installing: the repository root goes first on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ... and `import evalkit_cli` (the command line, installed under that name) finds this checkout's cli/.
from evalkit import _cli_package  # noqa: E402

_cli_package.use_checkout()
