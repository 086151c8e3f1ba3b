"""Public name of the figures; the code lives in :mod:`evalkit.output.plots` (sweeps, BDMC) and
:mod:`evalkit.output.plots_compare` (model comparisons)."""
from .output.plots import *  # noqa: F401,F403
from .output.plots import __all__ as _sweep_all
from .output.plots_compare import plot_compare  # noqa: F401

__all__ = list(_sweep_all) + ["plot_compare"]
