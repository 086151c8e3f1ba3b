"""Public name of the sweep figures; the code lives in :mod:`evalkit.output.plots`."""
from .output.plots import *  # noqa: F401,F403
from .output.plots import __all__  # noqa: F401
