r"""Estimators of log p(x) and weight diagnostics as pure functions of log-weights.

Every function takes log importance weights ``log_w`` of shape ``(..., K)`` --
``log w_i = log p(x, z_i) - log q(z_i | x)``, ``z_i ~ q(z | x)`` -- reduces the last axis and
returns shape ``(...)``. Inputs may be torch tensors (any float dtype, CPU or CUDA) or numpy
arrays (or anything ``numpy.asarray`` reads); reductions run in float64 and the result comes
back in the input's kind (torch on the input's device, numpy as float64). Inputs are never
written to. Results are not differentiable (inputs are detached).

Edge cases (the written contract; each has a test):

* ``-inf`` is a legal log-weight: a zero weight. A row of all ``-inf`` gives ``-inf`` for
  :func:`elbo`, :func:`iwae`, :func:`jvi` and :func:`dvi`, ``0`` for :func:`ess`, ``nan`` for
  :func:`psis_khat` and the Monte Carlo variances. :func:`elbo` is ``-inf`` as soon as one
  log-weight is ``-inf``.
* ``NaN`` and ``+inf`` raise :class:`~evalkit.errors.InputError` naming the rows: an infinite
  weight makes every estimate infinite or undefined and signals a bug upstream.
* ``K = 0`` raises :class:`~evalkit.errors.InputError`; so do ``jvi`` with ``order >= K``,
  ``dvi`` with ``K = 1`` and ``sumo`` with ``K < m + 1`` (``sumo`` is ``-inf`` where its first m
  log-weights are all ``-inf``).

Names
-----
:func:`get` maps the public vocabulary -- ``"elbo"``, ``"iwae"``, ``"jvi1"``, ``"jvi2"``, ...
(any ``"jviM"``, M >= 1), ``"dvi"``, ``"sumo"`` -- to :class:`Estimator` records; :func:`available`
lists the standard ones.

References
----------
.. [1] Y. Burda, R. Grosse, R. Salakhutdinov, "Importance weighted autoencoders", ICLR 2016.
.. [2] S. Nowozin, "Debiasing evidence approximations: on importance-weighted autoencoders and
   jackknife variational inference", ICLR 2018.
.. [4] Y. Luo, A. Beatson, M. Norouzi, J. Zhu, D. Duvenaud, R. P. Adams, R. T. Q. Chen, "SUMO:
   Unbiased estimation of log marginal probability for latent variable models", ICLR 2020.
.. [3] A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry, "Pareto smoothed importance
   sampling", JMLR 25 (2024); arXiv:1507.02646.

Modules: :mod:`.bounds` (ELBO, IWAE, DVI, ESS, MC variances), :mod:`.jackknife` (JVI of any
order), :mod:`.psis` (Pareto k-hat), :mod:`.shared_columns` (MC SE when rows share samples),
:mod:`.sumo` (SUMO, Luo et al. 2020), :mod:`.registry`
(names). May import :mod:`evalkit.errors` only: no model, no device logic,
no I/O.
"""
from .bounds import dvi, elbo, elbo_mc_variance, ess, iwae, iwae_mc_variance, jvi
from .jackknife import ACCURACY_RTOL, AccuracyWarning, jackknife_coefficients, jvi_with_error
from .psis import KHAT_BAD, KHAT_GOOD, khat_threshold, psis_khat
from .sumo import sumo, sumo_cap_probability, sumo_expected_columns, sumo_mc_variance, sumo_tail
from .registry import Estimator, available, get, get_many

__all__ = [
    "elbo",
    "iwae",
    "jvi",
    "jvi_with_error",
    "dvi",
    "sumo",
    "sumo_mc_variance",
    "sumo_tail",
    "sumo_cap_probability",
    "sumo_expected_columns",
    "ess",
    "psis_khat",
    "KHAT_GOOD",
    "KHAT_BAD",
    "khat_threshold",
    "elbo_mc_variance",
    "iwae_mc_variance",
    "Estimator",
    "get",
    "get_many",
    "available",
    "AccuracyWarning",
    "ACCURACY_RTOL",
    "jackknife_coefficients",
]
