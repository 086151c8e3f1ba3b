"""Where the command line comes from: the package ``evalkit_cli``, beside the evalkit that runs.

pyproject.toml installs the repository's ``cli/`` folder under evalkit's name, ``evalkit_cli``
(a top-level ``cli`` in site-packages would collide with any other distribution's ``cli``). A
checkout run without installing it (the repository on ``PYTHONPATH``, as the tests' subprocesses
run ``python -m evalkit``), or while another checkout is the installed one, has no such package
of its own: :func:`use_checkout` makes ``import evalkit_cli`` find this checkout's ``cli/`` folder,
so the command line always matches the evalkit running it. Installed from a wheel, it does nothing.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from typing import Optional

NAME = "evalkit_cli"


def checkout_folder() -> Optional[str]:
    """The ``cli/`` folder of the checkout this evalkit runs from; None when evalkit is installed."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = os.path.join(root, "cli")
    is_checkout = os.path.isfile(os.path.join(root, "pyproject.toml"))
    return folder if is_checkout and os.path.isfile(os.path.join(folder, "main.py")) else None


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds ``evalkit_cli`` (only that name) in a checkout's ``cli/`` folder; its sub-modules are
    then found through the package's ``__path__`` as usual."""

    def __init__(self, folder: str):
        self.folder = folder

    def find_spec(self, fullname, path=None, target=None):
        if fullname != NAME:
            return None
        return importlib.util.spec_from_file_location(NAME, os.path.join(self.folder, "__init__.py"),
                                                      submodule_search_locations=[self.folder])


def use_checkout() -> None:
    """In a checkout, ``import evalkit_cli`` finds its ``cli/`` folder first (before any installed one)."""
    folder = checkout_folder()
    if folder is None or any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _CheckoutFinder(folder))
