"""From a model and data to log-weights: the one owner of devices, memory and randomness.

* :mod:`.engine` -- the seeded, batched, memory-bounded importance-sampling engine
  (``log_weights``), on :mod:`.plan` (how large one model call is) and :mod:`.runner` (the calls
  and the threads that drive them, from :mod:`.workers`, the CPU worker pool AIS shares);
  :mod:`.memory` -- budgets and per-sample costs;
* :mod:`.blocks` -- the engine's matrix one block of datapoints at a time;
* :mod:`.cache` -- resumable on-disk shards (files in :mod:`.cache_store`, digests in
  :mod:`.fingerprint`); :mod:`.distributed` -- torchrun split and gather;
* :mod:`.hmc`, :mod:`.ais` (calls sized and laid out by :mod:`.ais_plan`, step sizes from
  :mod:`.ais_step_size`), :mod:`.bdmc` --
  annealed importance sampling with HMC transitions and bidirectional Monte Carlo;
  :mod:`.bnn_weights` -- a Bayesian network's weight samples.

May import :mod:`evalkit.errors`, :mod:`evalkit.atomic`, :mod:`evalkit.noise`, :mod:`evalkit.data`
and :mod:`evalkit.models`; never :mod:`evalkit.sources`, :mod:`evalkit.analysis` or
:mod:`evalkit.output`.
"""
