"""From a log-weight source to results: estimates at one K, sweeps over K, diagnostics.

* :mod:`.estimate` / :mod:`.estimate_result` -- :func:`evalkit.estimate` and its tables;
* :mod:`.compare` / :mod:`.compare_result` -- :func:`evalkit.compare`: paired differences of models;
* :mod:`.sweep` / :mod:`.sweep_result` / :mod:`.reference` -- bias, variance and RMSE over K
  from one pool, against the exact, a user's or the pool's best log p(x);
* :mod:`.groups`, :mod:`.asymptotics`, :mod:`.weights` (re-exported by :mod:`.diagnostics`) --
  pure statistics of groups of columns, IWAE theory and fits, ESS and k-hat summaries;
* :mod:`.tables` -- the text conventions every table shares.

Every consumer takes a :class:`~evalkit.sources.LogWeightSource` and never asks where the
log-weights came from. May import :mod:`evalkit.sources`, :mod:`evalkit.sampling`,
:mod:`evalkit.estimators`, :mod:`evalkit.models`, :mod:`evalkit.data` and the foundation
modules; :mod:`evalkit.output` only on call, from the results' ``save`` / ``figures`` / ``report``.
"""
