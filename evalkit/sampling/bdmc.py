"""Bidirectional Monte Carlo: log p(x) sandwiched between forward and reverse AIS on simulated data.

On data simulated from the model, (z*, x) ~ p(z) p(x | z), z* is an exact sample of p(z | x).
Forward AIS from f_0 gives weights with E[w] = p(x), so E[log w] <= log p(x) (a stochastic
lower bound); reverse AIS started at z* gives weights with E[w'] = 1 / p(x), so
E[-log w'] >= log p(x) (a stochastic upper bound). The gap between the two bounds the error of
either, and so tells how many steps AIS needs for this model (Grosse, Ghahramani & Adams 2015;
Wu et al. 2017).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import pandas as pd
import torch
from torch import Tensor

from .engine import prepared_model
from ..errors import InputError
from ..models.joint import check_ais_model, initial_sample
from ..noise import _PURPOSE_BDMC_SIMULATION, check_seed, stream
from .ais import ais_run, reverse_ais_log_weights


@dataclass
class BDMCResult:
    """The output of :func:`bdmc`.

    Attributes
    ----------
    summary : DataFrame
        One row per step count: ``steps``, the dataset means ``lower`` (mean over chains of
        log w), ``lower_lme`` (log-mean-exp over chains), ``upper`` (mean of -log w'),
        ``upper_lme`` (-log-mean-exp of log w'), ``gap = upper - lower``, the standard errors
        over datapoints ``lower_se``, ``upper_se``, the mean acceptance rates, and ``exact``
        when the model has ``log_marginal``.
    per_datapoint : DataFrame
        The same quantities per simulated datapoint (``index``), one row per (steps, index).
    x : Tensor, shape (n, data_dim)
        The simulated data (float32, CPU).
    z : Tensor, shape (n, *latent_shape)
        The latents that generated them (float64, CPU).
    """

    summary: pd.DataFrame
    per_datapoint: pd.DataFrame
    x: Tensor
    z: Tensor


def simulate(model: torch.nn.Module, n: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Draw ``n`` pairs (z, x) from the model: z ~ prior(), x ~ likelihood(z).

    Pair ``i`` is a fixed function of ``(seed, i)``: z from evalkit's standard-normal stream of
    datapoint ``i`` (purpose ``_PURPOSE_BDMC_SIMULATION``) through ``reparameterize``; x from
    ``likelihood(z).sample()`` under a forked torch RNG seeded with 32 bits of the same stream
    (torch's CPU generator uses 32 bits; for a few thousand pairs collisions are negligible).

    Returns
    -------
    (x, z) : Tensor (n, data_dim) float32 CPU, Tensor (n, *latent) float64 CPU
    """
    check_ais_model(model, "prior")
    seed = check_seed(seed)
    xs, zs = [], []
    with prepared_model(model, torch.device("cpu"), torch.float64) as cpu_model, torch.no_grad():
        prior = cpu_model.prior().expand(torch.Size([1]))
        for i in range(n):
            generator = stream(seed, i, purpose=_PURPOSE_BDMC_SIMULATION)
            noise = torch.from_numpy(generator.standard_normal((1, 1, *prior.event_shape)))
            z = initial_sample(cpu_model, prior, noise)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(generator.integers(2**32)))
                x = cpu_model.likelihood(z).sample()
            xs.append(x.reshape(-1))
            zs.append(z.reshape(prior.event_shape))
    return torch.stack(xs).float(), torch.stack(zs)


def _log_mean_exp(log_w: Tensor) -> Tensor:
    return torch.logsumexp(log_w, dim=1) - math.log(log_w.shape[1])


def bdmc(
    model: torch.nn.Module,
    *,
    n: int = 100,
    steps: Union[int, Sequence[int]] = (100, 1000),
    chains: int = 16,
    seed: int = 0,
    init: str = "proposal",
    leapfrog: int = 2,
    schedule: str = "sigmoid",
    batch_size: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    dtype: torch.dtype = torch.float32,
    progress: Optional[bool] = None,
    threads: Optional[int] = None,
) -> BDMCResult:
    """Bound log p(x) from both sides on ``n`` datapoints simulated from the model.

    For each step count T: forward AIS (:func:`~evalkit.sampling.ais.ais_run`, adaptive step
    sizes) and reverse AIS from the generating z (the forward run's step sizes, at the same b),
    both with ``chains`` chains per datapoint.

    Parameters
    ----------
    model : torch.nn.Module
        Follows the AIS protocol and can sample: ``prior()`` and ``likelihood(z).sample()``.
    n : int, default 100
        Simulated datapoints.
    steps : int or sequence of int, default (100, 1000)
        AIS step counts T; the gap should shrink as T grows.
    chains, seed, init, leapfrog, schedule, batch_size, device, dtype, progress, threads
        As :func:`~evalkit.sampling.ais.ais_run`.

    Returns
    -------
    BDMCResult

    Notes
    -----
    Cost per step count: about ``(2 chains + pilot) / chains`` times a forward AIS run of the
    same settings on ``n`` datapoints. The bounds hold for the simulated data; for real data
    they say how far AIS with T steps (and, by comparison, IWAE-K) is from log p(x) on data
    like the model's own.
    """
    step_counts = [steps] if isinstance(steps, int) else list(steps)
    if not step_counts or any(isinstance(t, bool) or not isinstance(t, int) or t < 2 for t in step_counts):
        raise InputError(f"Expected argument `steps` to be an int >= 2 or a list of them, got {steps!r}.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"Expected argument `n` to be a positive int, got {n!r}.")
    check_ais_model(model, init)
    x, z = simulate(model, n, seed=seed)
    exact = model.log_marginal(x.double()) if callable(getattr(model, "log_marginal", None)) else None
    options = dict(chains=chains, seed=seed, init=init, leapfrog=leapfrog, schedule=schedule, batch_size=batch_size,
                   device=device, dtype=dtype, progress=progress, threads=threads)
    rows = []
    for t in step_counts:
        forward = ais_run(model, x, steps=t, keep_step_sizes=True, **options)
        reverse = reverse_ais_log_weights(model, x, z, steps=t, step_size=forward.step_sizes, **options)
        frame = pd.DataFrame({
            "steps": t, "index": range(n),
            "lower": forward.log_weights.mean(1).numpy(), "lower_lme": _log_mean_exp(forward.log_weights).numpy(),
            "upper": (-reverse.log_weights).mean(1).numpy(), "upper_lme": (-_log_mean_exp(reverse.log_weights)).numpy(),
            "acceptance_forward": forward.acceptance_rate.numpy(), "acceptance_reverse": reverse.acceptance_rate.numpy(),
        })
        frame["gap"] = frame["upper"] - frame["lower"]
        if exact is not None:
            frame["exact"] = exact.detach().numpy()
        rows.append(frame)
    per_datapoint = pd.concat(rows, ignore_index=True)
    return BDMCResult(_summary(per_datapoint), per_datapoint, x, z)


def _summary(per_datapoint: pd.DataFrame) -> pd.DataFrame:
    """Dataset means per step count, with standard errors over datapoints of the two bounds."""
    grouped = per_datapoint.drop(columns="index").groupby("steps", sort=True)
    summary = grouped.mean()
    counts = grouped.size()
    for column in ("lower", "upper", "gap"):
        summary[f"{column}_se"] = grouped[column].std(ddof=1) / counts.pow(0.5)
    return summary.reset_index()


__all__ = ["BDMCResult", "bdmc", "simulate"]
