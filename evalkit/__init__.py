"""evalkit: honest log p(x) for latent-variable models.

Public API (see README):

* :func:`evalkit.load_model`, :func:`evalkit.save_model` -- checkpoints of every supported kind;
* :func:`evalkit.log_weights` -- the seeded, memory-bounded ``[N, K]`` log-weight engine;
* :func:`evalkit.estimate` -- log p(x) estimates with standard errors;
* :func:`evalkit.sweep` -- bias / variance diagnostics over K from one sample pool;
* :mod:`evalkit.estimators` -- pure estimator functions of log-weights.
"""
__version__ = "0.1.0"
