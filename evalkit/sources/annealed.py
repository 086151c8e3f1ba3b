"""Annealed importance sampling as a log-weight source: each chain's weight is a column.

:class:`AISSampler` has the engine's signature, ``(model, data, k, *, seed, indices, **options)
-> [N, k]``, with k the number of chains, so the same sources that stream, cache and gather the
engine's importance-sampling matrix (:mod:`evalkit.sources.importance`) run AIS unchanged: one
block of datapoints at a time, through the resumable cache (the AIS settings join its
fingerprint), or split across torchrun's processes. ``E[exp(log w)] = p(x)``, so IWAE over the
chains, JVI, ESS and k-hat apply to the chains' weights as to any importance weights.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from ..sampling.ais import ais_run

#: The AIS options a sampler takes (see :func:`evalkit.sampling.ais.ais_run`).
AIS_OPTIONS = ("steps", "schedule", "init", "leapfrog", "step_size", "target_accept", "pilot_chains", "adapt_from")

#: Engine options AIS uses; the engine's others (k_chunk, memory_budget, compile, tf32) do not apply.
_RUN_OPTIONS = ("batch_size", "device", "dtype", "progress", "threads")


class AISSampler:
    """Forward AIS from f_0 (q(z | x) or p(z)) to p(x, z), as a drop-in for :func:`evalkit.log_weights`.

    Parameters
    ----------
    steps, schedule, init, leapfrog, step_size, target_accept, pilot_chains, adapt_from
        As :func:`evalkit.sampling.ais.ais_run` (defaults: 1000 sigmoid steps from the proposal,
        2 leapfrog steps, step size tuned and adapted from pilot chains towards acceptance 0.65).

    Attributes
    ----------
    settings : dict
        The options that determine the numbers (for cache fingerprints and result metadata).
    acceptance_rates : list of Tensor
        Each call's per-datapoint mean HMC acceptance rate, in call order.
    """

    def __init__(self, *, steps: int = 1000, schedule: Union[str, Sequence[float]] = "sigmoid",
                 init: str = "proposal", leapfrog: int = 2, step_size: Optional[float] = None,
                 target_accept: float = 0.65, pilot_chains: int = 2, adapt_from: str = "pilot") -> None:
        self.options = dict(steps=steps, schedule=schedule, init=init, leapfrog=leapfrog, step_size=step_size,
                            target_accept=target_accept, pilot_chains=pilot_chains, adapt_from=adapt_from)
        self.acceptance_rates: List[torch.Tensor] = []

    @property
    def settings(self) -> Dict[str, Any]:
        settings = {"method": "ais", **self.options}
        if not isinstance(settings["schedule"], str):
            settings["schedule"] = [float(b) for b in settings["schedule"]]
        settings["step_size"] = "adaptive" if self.options["step_size"] is None else float(self.options["step_size"])
        return settings

    def __call__(self, model: torch.nn.Module, data: torch.Tensor, k: int, *, seed: int = 0,
                 indices: Optional[Any] = None, **engine_options: Any) -> torch.Tensor:
        run_options = {name: engine_options[name] for name in _RUN_OPTIONS if engine_options.get(name) is not None}
        result = ais_run(model, data, chains=k, seed=seed, indices=indices, **run_options, **self.options)
        self.acceptance_rates.append(result.acceptance_rate)
        return result.log_weights

    def summary(self) -> Dict[str, Any]:
        """The settings and the mean acceptance rate over every datapoint run so far."""
        out = dict(self.settings)
        if self.acceptance_rates:
            out["mean_acceptance_rate"] = float(torch.cat(self.acceptance_rates).mean())
        return out
