"""From a model and data to log-weights: the one owner of devices, memory and randomness.

* :mod:`.engine` -- the seeded, batched, memory-bounded importance-sampling engine
  (``log_weights``); :mod:`.memory` -- budgets and per-sample costs;
* :mod:`.blocks` -- the engine's matrix one block of datapoints at a time;
* :mod:`.cache` -- resumable on-disk shards; :mod:`.distributed` -- torchrun split and gather.

May import :mod:`evalkit.errors`, :mod:`evalkit.atomic`, :mod:`evalkit.noise`, :mod:`evalkit.data`
and :mod:`evalkit.models`; never :mod:`evalkit.sources`, :mod:`evalkit.analysis` or
:mod:`evalkit.output`.
"""
