"""evalkit: honest log p(x) for latent-variable models.

Public API (see README):

* :func:`load_model`, :func:`save_model` -- checkpoints of every supported kind;
* :func:`log_weights` -- the seeded, memory-bounded ``[N, K]`` log-weight engine;
* :func:`estimate` -- log p(x) estimates with standard errors (:class:`EstimateResult`), from a
  model by importance sampling (``method="is"``) or annealed importance sampling (``"ais"``),
  a Bayesian network's predictive or evidence, or any :class:`~evalkit.sources.LogWeightSource`;
* :func:`compare` -- two or more models on the same data: paired differences with data and Monte
  Carlo standard errors (:class:`CompareResult`);
* :func:`sweep` -- bias / variance diagnostics over K from one sample pool (:class:`SweepResult`);
* :func:`ais`, :func:`bdmc` -- AIS log-weights; bidirectional Monte Carlo bounds;
* :mod:`evalkit.estimators` -- pure estimator functions of log-weights (``elbo``, ``iwae``,
  ``jvi``, ``dvi``, ``ess``, ``psis_khat``) and the name registry (``get``, ``available``);
* :mod:`evalkit.models` -- the model protocol and built-in models; :mod:`evalkit.data` -- datasets;
  :mod:`evalkit.sources` -- where log-weights come from.
"""
from . import _interrupts  # first: Ctrl-C / SIGTERM while torch imports end the command line cleanly

_interrupts.guard_imports()

from ._version import __version__  # noqa: F401,E402

from . import data, estimators, models, sources  # noqa: E402
from .analysis.annealing import ais, bdmc  # noqa: E402
from .analysis.compare import compare  # noqa: E402
from .analysis.compare_result import CompareResult  # noqa: E402
from .analysis.estimate import EstimateResult, estimate, estimate_from_log_weights  # noqa: E402
from .analysis.sweep import SweepResult, load_log_weights, sweep  # noqa: E402
from .models.checkpoints import load_model, save_model  # noqa: E402
from .sampling.engine import log_weights  # noqa: E402

__all__ = [
    "CompareResult",
    "EstimateResult",
    "SweepResult",
    "ais",
    "bdmc",
    "compare",
    "data",
    "estimate",
    "estimate_from_log_weights",
    "estimators",
    "load_log_weights",
    "load_model",
    "log_weights",
    "models",
    "save_model",
    "sources",
    "sweep",
]
