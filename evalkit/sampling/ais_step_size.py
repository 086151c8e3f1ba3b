"""AIS's step sizes: the pilot chains' trial transitions at f_0, then proportional adaptation.

Both use the pilot chains only (their own random streams), so the weighted chains' kernels do
not depend on them and E[w] = p(x) stays exact (:func:`evalkit.sampling.ais.ais_run`, Notes).

May import torch, :mod:`evalkit.sampling.hmc` and :mod:`evalkit.sampling.chain_noise`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import hmc
from .chain_noise import ChainNoise

INITIAL_STEP_SIZE = 0.01
"""Leapfrog step size of the first transition when adapting (that of the reference code)."""

STEP_SIZE_RANGE = (1e-4, 0.5)
"""Adapted step sizes are clipped to this range (that of the reference code)."""

ADAPT_GAIN = 1.0
"""g of the adaptation ``eps *= exp(g (a - target))`` after each transition (a: the pilot's mean acceptance)."""

TUNE_TRIALS = 8
"""Trial transitions of the pilot chains at b_0 that choose the first step size (0: start at ``INITIAL_STEP_SIZE``)."""

TUNE_FACTOR = 4.0
"""The trials multiply or divide the step size by this until the target acceptance is bracketed, then bisect."""


def row_mean(values: Tensor) -> Tensor:
    """Mean over the last dimension as a left-to-right sum of columns (the same bits in any layout)."""
    total = values[..., 0]
    for column in range(1, values.shape[-1]):
        total = total + values[..., column]
    return total / values.shape[-1]


def tuned_step_size(path, state: hmc.HMCState, beta: float, noise: ChainNoise, pilot: slice,
                     target_accept: float, leapfrog: int) -> Tensor:
    """Return a step size ``[S]`` (float64) for f_b from trial transitions of the pilot chains only.

    ``path`` is AIS's path of one call (``state(z, ends, beta)``, ``density_fn(beta)``) and
    ``state.aux`` its endpoint densities; ``pilot`` selects the pilot rows of each slot.

    Each trial starts at the pilot chains' current positions with fresh momenta from the
    datapoint's tuning streams; per datapoint the step size is multiplied (acceptance above
    target) or divided by ``TUNE_FACTOR`` until the target is bracketed, then bisected in log
    space. Only pilot chains take part, so the weighted chains' kernels stay independent of them.
    """
    ends = state.aux
    pilot_ends = type(ends)(*(part[:, pilot] for part in ends))
    pilot_state = path.state(state.position[:, pilot], pilot_ends, beta)
    density = path.density_fn(beta)
    momenta, log_u = noise.trials(TUNE_TRIALS, pilot)
    n_slots = state.position.shape[0]
    low_end, high_end = (math.log(v) for v in STEP_SIZE_RANGE)
    step = math.log(TUNE_FACTOR)
    log_eps = torch.full((n_slots,), math.log(INITIAL_STEP_SIZE), dtype=torch.float64, device=state.position.device)
    low = torch.full_like(log_eps, -math.inf)
    high = torch.full_like(log_eps, math.inf)
    for trial in range(TUNE_TRIALS):
        _, info = hmc.step(pilot_state, density, momenta[trial], log_u[trial],
                           log_eps.exp().to(state.position.dtype).unsqueeze(1), leapfrog)
        up = row_mean(info.acceptance_prob) > target_accept
        low, high = torch.where(up, log_eps, low), torch.where(up, high, log_eps)
        bracketed = torch.isfinite(low) & torch.isfinite(high)
        log_eps = torch.where(bracketed, (low + high) / 2, torch.where(up, log_eps + step, log_eps - step))
        log_eps = log_eps.clamp(low_end, high_end)
    return log_eps.exp()


def adapted_step_size(eps: Tensor, acceptance: Tensor, target_accept: float) -> Tensor:
    """The next transition's step size ``[S]`` from the pilot's mean acceptance probability ``[S]``."""
    return (eps * torch.exp(ADAPT_GAIN * (acceptance - target_accept))).clamp(*STEP_SIZE_RANGE)


__all__ = ["ADAPT_GAIN", "INITIAL_STEP_SIZE", "STEP_SIZE_RANGE", "TUNE_FACTOR", "TUNE_TRIALS", "adapted_step_size",
           "row_mean", "tuned_step_size"]
