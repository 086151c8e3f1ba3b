"""Sources of log-weights: every way an ``[N, K]`` matrix arises, behind one abstraction.

* :class:`LogWeightSource` (:mod:`.base`) -- N, K, the rows' dataset indices, descriptions,
  blocks of rows;
* :class:`MatrixSource` (:mod:`.matrix`) -- a matrix from any tool or file;
* :class:`ImportanceSamplingSource`, :class:`CachedSource`, :class:`TorchrunSource`
  (:mod:`.importance`) -- a model's proposal through the engine, the cache or torchrun;
* :func:`open_source` (:mod:`.inputs`) -- the one place that picks a source for the user's input.

May import :mod:`evalkit.sampling`, :mod:`evalkit.models`, :mod:`evalkit.data` and the
foundation modules; never :mod:`evalkit.analysis` or :mod:`evalkit.output`.
"""
from .base import LogWeightSource
from .importance import CachedSource, ImportanceSamplingSource, TorchrunSource
from .inputs import describe_data, describe_model, open_source, resolve_data, resolve_model
from .matrix import MatrixSource, check_log_weights, load_array, load_log_weights

__all__ = [
    "CachedSource",
    "ImportanceSamplingSource",
    "LogWeightSource",
    "MatrixSource",
    "TorchrunSource",
    "check_log_weights",
    "describe_data",
    "describe_model",
    "load_array",
    "load_log_weights",
    "open_source",
    "resolve_data",
    "resolve_model",
]
