"""evalkit: honest log p(x) for latent-variable models.

Public API (see README):

* :func:`load_model`, :func:`save_model` -- checkpoints of every supported kind;
* :func:`log_weights` -- the seeded, memory-bounded ``[N, K]`` log-weight engine;
* :func:`estimate` -- log p(x) estimates with standard errors (:class:`EstimateResult`);
* :func:`sweep` -- bias / variance diagnostics over K from one sample pool (:class:`SweepResult`);
* :mod:`evalkit.estimators` -- pure estimator functions of log-weights (``elbo``, ``iwae``,
  ``jvi``, ``dvi``, ``ess``, ``psis_khat``) and the name registry (``get``, ``available``);
* :mod:`evalkit.models` -- the model protocol and built-in models; :mod:`evalkit.data` -- datasets.
"""
from ._version import __version__  # noqa: E402

from . import data
from . import estimators
from . import models  # noqa: E402
from .models.checkpoints import load_model, save_model  # noqa: E402
from .sampling.engine import log_weights  # noqa: E402
from .analysis.estimate import EstimateResult, estimate, estimate_from_log_weights  # noqa: E402
from .analysis.sweep import SweepResult, load_log_weights, sweep  # noqa: E402

__all__ = [
    "EstimateResult",
    "SweepResult",
    "estimate",
    "estimate_from_log_weights",
    "estimators",
    "load_log_weights",
    "load_model",
    "log_weights",
    "save_model",
    "sweep",
]
