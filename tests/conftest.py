import os
import sys

# Run from a checkout without installing: the repository root goes first on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
