"""Annealed importance sampling: ``[N, chains]`` log-weights whose mean weight is p(x).

AIS (Neal 2001) anneals from an initial distribution f_0 (the proposal q(z | x), or the prior)
to the unnormalised posterior p(x, z) along the geometric path

    f_t(z) = f_0(z)^(1 - b_t) p(x, z)^(b_t),   0 = b_0 < b_1 < ... < b_T = 1.

Each chain draws z_0 ~ f_0 and, for t = 1..T, adds (b_t - b_{t-1}) (log p(x, z_{t-1}) -
log f_0(z_{t-1})) to its log-weight and moves z_{t-1} -> z_t with an HMC transition that
leaves f_t invariant (:mod:`evalkit.sampling.hmc`; T - 1 transitions, the last one would not
change the weight). Then E[w] = p(x): log w is a stochastic lower bound on log p(x), and the
chains of a datapoint form an importance-weight row that every estimator of evalkit accepts.

Reverse AIS (for BDMC) runs the same path from b = 1 to b = 0, starting at an exact posterior
sample; its weights have mean 1 / p(x), so minus their log is a stochastic upper bound.

Reproducibility. Initial draws, momenta and accept/reject uniforms of datapoint n come from its
own streams keyed by ``(seed, indices[n])`` (:mod:`evalkit.noise`). torch's CPU kernels give a
row the same bits wherever it sits only if the call has a multiple of 32 rows and the row's
position modulo 32 stays the same (:mod:`evalkit.sampling.engine`). A call holds ``S`` slots of
``R = chains (+ pilot chains)`` rows each; datapoint n goes to a slot ``s`` with ``s % a == n % a``
and calls have a multiple of ``a`` slots, ``a = 32 / gcd(R, 32)``
(:func:`evalkit.sampling.runner._make_batches`). Then ``a R`` is a multiple of 32, so every call
has a multiple of 32 rows and datapoint n's rows start at a position congruent to
``(n % a) R`` modulo 32, in any call: on the CPU the result is bit for bit independent of
``batch_size``, ``threads`` and the order and slicing of the data.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from ..data import check_data_for_model
from .ais_plan import worker_threads, plan_batch_size, slot_align
from .engine import COMPUTE_DTYPES, _check_indices, _positive_int, _progress_bar, prepared_model, resolve_device
from .runner import _invalid_weights_error, _make_batches
from .workers import LockedProgress, intra_op_threads, run_in_workers
from ..errors import InputError
from ..models.joint import (
    check_ais_model,
    initial_distribution,
    initial_log_prob_and_grad,
    initial_sample,
    latent_shape,
)
from ..noise import (
    _PURPOSE_AIS_ACCEPT,
    _PURPOSE_AIS_MOMENTUM,
    _PURPOSE_AIS_REVERSE_ACCEPT,
    _PURPOSE_AIS_REVERSE_MOMENTUM,
    check_seed,
)
from . import hmc
from .ais_step_size import INITIAL_STEP_SIZE, TUNE_TRIALS, adapted_step_size, row_mean, tuned_step_size
from .chain_noise import ChainNoise
from .schedules import make_schedule

ADAPT_FROM = ("pilot", "chains")


class Endpoints(NamedTuple):
    """The path's two ends at the chains' positions: log f_0, log p(x, z) ([B, C] float64) and their gradients."""

    log_initial: Tensor
    log_joint: Tensor
    grad_initial: Tensor
    grad_joint: Tensor


@dataclass
class AISResult:
    """The output of :func:`ais_run`.

    Attributes
    ----------
    log_weights : Tensor, shape (N, chains), float64
        Forward: ``E[exp(log_weights)] = p(x_n)``; reverse: ``= 1 / p(x_n)``.
    acceptance_rate : Tensor, shape (N,), float64
        Mean HMC acceptance probability of the chains over all transitions.
    step_sizes : Tensor, shape (N, steps - 1), float64, or None
        Step size of each transition (kept with ``keep_step_sizes=True``).
    settings : dict
        The run's options, for tables and reports.
    """

    log_weights: Tensor
    acceptance_rate: Tensor
    step_sizes: Optional[Tensor] = None
    settings: dict = field(default_factory=dict)


class _Path:
    """The geometric path between f_0 (batch ``[S]``) and p(x, z) for the slots of one call."""

    def __init__(self, model, x: Tensor, initial) -> None:
        self.model, self.x, self.initial = model, x, initial

    def endpoints(self, z: Tensor) -> Endpoints:
        log_initial, grad_initial = initial_log_prob_and_grad(self.initial, z)
        fast = getattr(self.model, "log_joint_and_grad", None)
        if callable(fast):
            log_joint, grad_joint = fast(self.x, z)
            return Endpoints(log_initial, log_joint, grad_initial, grad_joint)
        with torch.enable_grad():
            leaf = z.detach().requires_grad_(True)
            log_joint = self.model.log_joint(self.x, leaf)
            (grad_joint,) = torch.autograd.grad(log_joint.sum(), leaf)
        return Endpoints(log_initial, log_joint.detach(), grad_initial, grad_joint)

    @staticmethod
    def tempered(ends: Endpoints, beta: float) -> tuple[Tensor, Tensor]:
        """Return ``log f_b`` and its gradient from the endpoints."""
        log_density = (1 - beta) * ends.log_initial + beta * ends.log_joint
        return log_density, (1 - beta) * ends.grad_initial + beta * ends.grad_joint

    def density_fn(self, beta: float) -> hmc.DensityFn:
        def density(z: Tensor):
            ends = self.endpoints(z)
            return (*self.tempered(ends, beta), ends)

        return density

    def state(self, z: Tensor, ends: Optional[Endpoints], beta: float) -> hmc.HMCState:
        ends = self.endpoints(z) if ends is None else ends
        return hmc.HMCState(z, *self.tempered(ends, beta), ends)


def _anneal_call(path: _Path, z0: Tensor, betas: Tensor, noise: ChainNoise, *, chains: int, adapt_rows: slice,
                 step_size: Union[float, Tensor, None], target_accept: float, leapfrog: int,
                 progress, n_real: int) -> tuple[Tensor, Tensor, Tensor]:
    """Run every chain of one call along ``betas``; return log-weights ``[S, rows]``, step sizes ``[S, T-1]``, acceptance ``[S]``."""
    n_slots, n_transitions = z0.shape[0], len(betas) - 2
    betas = betas.tolist()
    state = path.state(z0, None, betas[0])
    log_w = torch.zeros(z0.shape[:2], dtype=torch.float64, device=z0.device)
    eps = torch.full((n_slots,), INITIAL_STEP_SIZE, dtype=torch.float64, device=z0.device)
    if step_size is None and TUNE_TRIALS and adapt_rows.start > 0:
        eps = tuned_step_size(path, state, betas[0], noise, adapt_rows, target_accept, leapfrog)
    step_sizes = torch.empty((n_slots, max(n_transitions, 0)), dtype=torch.float64, device=z0.device)
    acceptance = torch.zeros(n_slots, dtype=torch.float64, device=z0.device)
    for t in range(1, len(betas)):
        ends = state.aux
        log_w = log_w + (betas[t] - betas[t - 1]) * (ends.log_joint - ends.log_initial)
        if t == len(betas) - 1:
            break
        j = t - 1
        if isinstance(step_size, Tensor):
            eps = step_size[:, j]
        elif step_size is not None:
            eps = torch.full_like(eps, step_size)
        step_sizes[:, j] = eps
        state = path.state(state.position, ends, betas[t])
        momentum, log_u = noise.transition(j)
        state, info = hmc.step(state, path.density_fn(betas[t]), momentum, log_u,
                               eps.to(z0.dtype).unsqueeze(1), leapfrog)
        acceptance = acceptance + row_mean(info.acceptance_prob[:, :chains])
        if step_size is None:
            eps = adapted_step_size(eps, row_mean(info.acceptance_prob[:, adapt_rows]), target_accept)
        progress.update(n_real)
    return log_w, step_sizes, acceptance / max(n_transitions, 1)


def _anneal(model, data: Tensor, indices: Tensor, betas: Tensor, *, z_exact: Optional[Tensor], chains: int,
            pilot_chains: int, adapt_from: str, step_size, target_accept: float, leapfrog: int, init: str,
            seed: int, purposes: tuple[int, int], batch_size: Optional[int], device, dtype, progress,
            keep_step_sizes: bool, desc: str, threads: Optional[int] = None) -> AISResult:
    """Run AIS along ``betas`` for every datapoint (validated arguments); see :func:`ais_run`.

    On the CPU the calls run on worker threads with one intra-op thread each (from the calling
    thread when there is one worker), so the result does not depend on ``threads``.
    """
    adapting = step_size is None
    rows = chains + (pilot_chains if adapting and adapt_from == "pilot" else 0)
    adapt_rows = slice(chains, rows) if adapt_from == "pilot" else slice(0, chains)
    n_data, n_transitions = data.shape[0], len(betas) - 2
    out = torch.empty(n_data, chains, dtype=torch.float64)
    acceptance = torch.empty(n_data, dtype=torch.float64)
    step_sizes = torch.empty(n_data, max(n_transitions, 0), dtype=torch.float64) if keep_step_sizes else None
    threads = worker_threads(threads, device)
    with prepared_model(model, device, dtype) as run_model, torch.no_grad():
        size = plan_batch_size(run_model, rows, n_data, dtype, device, batch_size, threads)
        batches = list(_make_batches(indices, size, slot_align(rows)))
        with _progress_bar(progress, n_data * max(n_transitions, 0), desc=desc, unit="step") as bar:
            bar = LockedProgress(bar)

            def run_batch(batch) -> None:
                slot_indices: list = [None] * batch.n_slots
                for slot, index in zip(batch.slots.tolist(), batch.indices):
                    slot_indices[slot] = index
                x = data[batch.slot_rows].to(device=device, dtype=dtype)
                initial = initial_distribution(run_model, x, init)
                noise = ChainNoise(seed, slot_indices, rows, latent_shape(initial), purposes, dtype, device)
                if z_exact is None:
                    z0 = initial_sample(run_model, initial, noise.initial())
                else:
                    z_slots = z_exact[batch.slot_rows].to(device=device, dtype=dtype).unsqueeze(1)
                    z0 = z_slots.expand(batch.n_slots, rows, *z_slots.shape[2:]).contiguous()
                given = step_size[batch.slot_rows].to(device) if isinstance(step_size, Tensor) else step_size
                log_w, used, rate = _anneal_call(
                    _Path(run_model, x, initial), z0, betas, noise, chains=chains, adapt_rows=adapt_rows,
                    step_size=given, target_accept=target_accept, leapfrog=leapfrog, progress=bar,
                    n_real=len(batch.indices))
                # Batches hold disjoint rows: workers never write to the same place.
                out[batch.rows] = log_w[batch.slots, :chains].cpu()
                acceptance[batch.rows] = rate[batch.slots].cpu()
                if step_sizes is not None:
                    step_sizes[batch.rows] = used[batch.slots].cpu()

            if threads > 1 and len(batches) > 1:
                run_in_workers(batches, run_batch, threads, grad_mode=torch.no_grad)
            else:
                with intra_op_threads(1) if device.type == "cpu" else nullcontext():
                    for batch in batches:
                        run_batch(batch)
    error = _invalid_weights_error(out, indices)
    if error is not None:
        raise error
    return AISResult(out, acceptance, step_sizes)


def _check_options(model, data: Tensor, *, chains, steps, leapfrog, step_size, target_accept, pilot_chains,
                   adapt_from, init, seed, batch_size, dtype) -> None:
    check_ais_model(model, init)
    check_data_for_model(data, model)
    for name, value in (("chains", chains), ("steps", steps), ("leapfrog", leapfrog), ("pilot_chains", pilot_chains)):
        _positive_int(value, name)
    if batch_size is not None:
        _positive_int(batch_size, "batch_size")
    check_seed(seed)
    if dtype not in COMPUTE_DTYPES:
        raise InputError(f"Expected argument `dtype` to be torch.float32 or torch.float64, got {dtype!r}.")
    if not (isinstance(target_accept, (int, float)) and 0 < target_accept < 1):
        raise InputError(f"Expected argument `target_accept` to be in (0, 1), got {target_accept!r}.")
    if adapt_from not in ADAPT_FROM:
        raise InputError(f"Expected argument `adapt_from` to be 'pilot' or 'chains', got {adapt_from!r}.")
    if step_size is not None and not isinstance(step_size, Tensor) and not (
            isinstance(step_size, (int, float)) and not isinstance(step_size, bool) and step_size > 0):
        raise InputError(f"Expected argument `step_size` to be None (adaptive) or a positive number, got {step_size!r}.")


def ais_run(
    model: torch.nn.Module,
    data: Tensor,
    *,
    chains: int = 16,
    steps: int = 1000,
    schedule: Union[str, Sequence[float], Tensor] = "sigmoid",
    init: str = "proposal",
    leapfrog: int = 2,
    step_size: Optional[float] = None,
    target_accept: float = 0.65,
    pilot_chains: int = 2,
    adapt_from: str = "pilot",
    seed: int = 0,
    indices: Optional[Union[Tensor, Sequence[int]]] = None,
    batch_size: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    dtype: torch.dtype = torch.float32,
    progress: Optional[bool] = None,
    keep_step_sizes: bool = False,
    threads: Optional[int] = None,
) -> AISResult:
    """Run forward AIS for every datapoint; return log-weights, acceptance rates and settings.

    Parameters
    ----------
    model : torch.nn.Module
        Follows the AIS protocol (``log_joint``, ``proposal``, ``prior``; see
        :mod:`evalkit.models.base`).
    data : Tensor, shape (N, data_dim)
    chains : int, default 16
        Independent chains per datapoint (columns of the result).
    steps : int, default 1000
        T: intermediate distributions; each chain makes T - 1 HMC transitions.
    schedule : {"sigmoid", "linear", "geometric"} or sequence of T + 1 floats
        The b_t (:func:`evalkit.sampling.schedules.make_schedule`).
    init : {"proposal", "prior"}
        f_0: q(z | x) or p(z).
    leapfrog : int, default 2
        Leapfrog steps (gradient evaluations) per transition. At equal cost more steps T with
        fewer leapfrog steps reach a given accuracy sooner (``benchmarks/bench_ais_accuracy.py``:
        on the bundled digits model and a linear-Gaussian model, T steps of 2 leapfrog steps
        were as accurate as T steps of 5).
    step_size : float, optional
        A fixed leapfrog step size; default None adapts it (see Notes).
    target_accept : float, default 0.65
        Acceptance probability the adaptation aims at.
    pilot_chains : int, default 2
        Extra chains per datapoint, run alongside, whose acceptances drive the adaptation;
        their weights are discarded.
    adapt_from : {"pilot", "chains"}
        "chains" adapts from the datapoint's own chains instead, as the common reference
        code does (no pilot cost, but E[w] = p(x) then holds only approximately; see Notes).
    seed : int, default 0
    indices : LongTensor, shape (N,), optional
        Dataset index of each row (default ``arange(N)``): its random streams.
    batch_size : int, optional
        Datapoints per model call (default from ``MAX_ROWS_PER_CALL`` and the memory budget);
        a memory knob only, the result does not depend on it.
    device : str or torch.device, optional
        Default CUDA when available.
    dtype : torch.float32 or torch.float64, default float32
        Compute dtype of the model and the chains; log-densities and weights are float64.
    progress : bool, optional
        A tqdm bar on stderr: None shows it when stderr is a terminal (after 2 s).
    keep_step_sizes : bool, default False
        Keep the ``[N, T - 1]`` step sizes (for reverse AIS on the same data).
    threads : int, optional
        CPU worker threads, each running whole calls on one core (default: torch's intra-op
        thread count; 1 on a GPU). A speed knob only: the result does not depend on it.

    Returns
    -------
    AISResult

    Notes
    -----
    Validity of the adaptation. AIS is unbiased, E[w] = p(x), when each transition leaves
    f_t invariant and is chosen independently of the chain it moves. A step size adapted from
    a chain's own past acceptances breaks the second condition: the kernel at step t then
    depends on z_0..z_{t-1}, and the extended-space argument (and the unbiasedness) no longer
    holds exactly. evalkit therefore adapts from ``pilot_chains`` extra chains of the same
    datapoint, with their own random numbers (the rule below). The step sizes are then a
    random sequence independent of the weighted chains, each of which sees, at every step, a
    fixed HMC kernel that leaves f_t invariant; conditionally on the pilot E[w] = p(x)
    exactly, hence unconditionally too. The adaptation uses only that datapoint's past, so it
    does not depend on batching. Cost: ``(chains + pilot_chains) / chains`` of the chains alone.

    The rule (:mod:`evalkit.sampling.ais_step_size`). Before the first transition the pilot
    chains make ``TUNE_TRIALS`` (8) trial transitions at f_0 from their starting points, with
    their own random numbers: the step size (from 0.01) is multiplied or divided by 4 until
    the target acceptance is bracketed, then bisected in log space. After each transition it
    is multiplied by ``exp(ADAPT_GAIN (a - target_accept))``, ``a`` the pilot chains' mean
    acceptance probability, ``ADAPT_GAIN = 1``; step sizes stay in ``STEP_SIZE_RANGE``. The common
    reference code instead starts every chain at 0.01 and moves it by 2 % per transition, so a
    run of T transitions spends its first ~100 with step sizes far too small (acceptance near
    1, chains that hardly move): short runs then give little more than IWAE over the chains'
    starting points. Both the trials and the adaptation use the pilot chains only, so the
    argument above holds unchanged.

    Cost: ``N * (chains + pilot_chains) * (T - 1) * leapfrog`` evaluations of ``log_joint`` and
    its gradient (about three forward passes each with autograd), plus one at the start and
    ``TUNE_TRIALS * leapfrog`` for the pilot chains' trials.

    References
    ----------
    .. [1] R. M. Neal (2001), "Annealed importance sampling", Statistics and Computing 11.
    .. [2] Y. Wu, Y. Burda, R. Salakhutdinov, R. Grosse (2017), "On the quantitative analysis of
       decoder-based generative models", ICLR.
    """
    _check_options(model, data, chains=chains, steps=steps, leapfrog=leapfrog, step_size=step_size,
                   target_accept=target_accept, pilot_chains=pilot_chains, adapt_from=adapt_from, init=init,
                   seed=seed, batch_size=batch_size, dtype=dtype)
    betas = make_schedule(schedule, steps)
    indices = _check_indices(indices, data.shape[0])
    result = _anneal(model, data, indices, betas, z_exact=None, chains=chains, pilot_chains=pilot_chains,
                     adapt_from=adapt_from, step_size=step_size, target_accept=target_accept, leapfrog=leapfrog,
                     init=init, seed=check_seed(seed), purposes=(_PURPOSE_AIS_MOMENTUM, _PURPOSE_AIS_ACCEPT),
                     batch_size=batch_size, device=resolve_device(device), dtype=dtype, progress=progress,
                     keep_step_sizes=keep_step_sizes, desc="AIS", threads=threads)
    result.settings = dict(direction="forward", chains=chains, steps=steps,
                           schedule=schedule if isinstance(schedule, str) else "custom", init=init, leapfrog=leapfrog,
                           step_size="adaptive" if step_size is None else float(step_size),
                           target_accept=target_accept, pilot_chains=pilot_chains if step_size is None else 0,
                           adapt_from=adapt_from, seed=seed, dtype=str(dtype).replace("torch.", ""))
    return result


def ais_log_weights(model: torch.nn.Module, data: Tensor, **options) -> Tensor:
    """Return the ``[N, chains]`` float64 AIS log-weights: ``ais_run(model, data, **options).log_weights``.

    See :func:`ais_run` for the options (``chains=16, steps=1000, schedule="sigmoid",
    init="proposal", leapfrog=2, step_size=None, target_accept=0.65, seed=0, indices=None,
    batch_size=None, device=None, dtype=torch.float32, progress=None``) and for why the
    adaptive step size keeps ``E[exp(log_w)] = p(x)``.

    Examples
    --------
    >>> import torch, evalkit
    >>> from evalkit.sampling.ais import ais_log_weights
    >>> model = evalkit.models.LinearGaussianModel.random(data_dim=6, latent_dim=2)
    >>> x = model.marginal().sample((4,))
    >>> log_w = ais_log_weights(model, x, chains=8, steps=200, progress=False)
    >>> log_w.shape, log_w.dtype
    (torch.Size([4, 8]), torch.float64)
    """
    return ais_run(model, data, **options).log_weights


def reverse_ais_log_weights(
    model: torch.nn.Module,
    data: Tensor,
    z_exact: Tensor,
    *,
    chains: int = 16,
    steps: int = 1000,
    schedule: Union[str, Sequence[float], Tensor] = "sigmoid",
    init: str = "proposal",
    leapfrog: int = 2,
    step_size: Union[None, float, Tensor] = None,
    seed: int = 0,
    indices: Optional[Union[Tensor, Sequence[int]]] = None,
    batch_size: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    dtype: torch.dtype = torch.float32,
    progress: Optional[bool] = None,
    threads: Optional[int] = None,
    **forward_options,
) -> AISResult:
    """Run AIS from b = 1 to b = 0, every chain starting at the exact posterior sample ``z_exact``.

    Parameters
    ----------
    data : Tensor, shape (N, data_dim)
    z_exact : Tensor, shape (N, *latent_shape)
        ``z_exact[n] ~ p(z | x_n)`` exactly (for simulated data: the z that generated x_n).
    step_size : float, Tensor of shape (N, steps - 1), or None
        A fixed step size, or the per-transition step sizes of a forward run on the same data
        (``ais_run(..., keep_step_sizes=True).step_sizes``, in forward order; they are used at
        the same b in reverse). None runs a forward pilot (``chains=1`` plus the pilot chains,
        ``forward_options`` passed on) to get them: adapting from chains started at
        ``z_exact`` would make the kernels depend on the start and bias the bound.
    Other parameters as :func:`ais_run`.

    Returns
    -------
    AISResult
        ``log_weights`` ``[N, chains]`` with ``E[exp(log_weights)] = 1 / p(x_n)``:
        ``-log_weights`` is a stochastic upper bound on ``log p(x_n)`` (Grosse et al. 2015).
    """
    if not isinstance(step_size, Tensor):
        _check_options(model, data, chains=chains, steps=steps, leapfrog=leapfrog, step_size=step_size,
                       target_accept=0.65, pilot_chains=1, adapt_from="pilot", init=init, seed=seed,
                       batch_size=batch_size, dtype=dtype)
    common = dict(steps=steps, schedule=schedule, init=init, leapfrog=leapfrog, seed=seed, indices=indices,
                  batch_size=batch_size, device=device, dtype=dtype, progress=progress, threads=threads)
    if step_size is None:
        step_size = ais_run(model, data, chains=1, keep_step_sizes=True, **common, **forward_options).step_sizes
    if isinstance(step_size, Tensor):
        _check_options(model, data, chains=chains, steps=steps, leapfrog=leapfrog, step_size=None, target_accept=0.65,
                       pilot_chains=1, adapt_from="pilot", init=init, seed=seed, batch_size=batch_size, dtype=dtype)
        if tuple(step_size.shape) != (data.shape[0], steps - 1):
            raise InputError(f"Expected `step_size` of shape ({data.shape[0]}, {steps - 1}) (one per datapoint and "
                             f"transition of a forward run), got {tuple(step_size.shape)}.")
        step_size = step_size.double().flip(1)
    if z_exact.shape[0] != data.shape[0]:
        raise InputError(f"Expected `z_exact` with one row per datapoint ({data.shape[0]}), got {tuple(z_exact.shape)}.")
    betas = make_schedule(schedule, steps).flip(0)
    result = _anneal(model, data, _check_indices(indices, data.shape[0]), betas, z_exact=z_exact, chains=chains,
                     pilot_chains=0, adapt_from="pilot", step_size=step_size, target_accept=0.65, leapfrog=leapfrog,
                     init=init, seed=check_seed(seed),
                     purposes=(_PURPOSE_AIS_REVERSE_MOMENTUM, _PURPOSE_AIS_REVERSE_ACCEPT), batch_size=batch_size,
                     device=resolve_device(device), dtype=dtype, progress=progress, keep_step_sizes=False,
                     desc="reverse AIS", threads=threads)
    result.settings = dict(direction="reverse", chains=chains, steps=steps, init=init, leapfrog=leapfrog, seed=seed)
    return result


__all__ = ["AISResult", "Endpoints", "ais_log_weights", "ais_run", "reverse_ais_log_weights"]
