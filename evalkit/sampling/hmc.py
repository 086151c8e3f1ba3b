"""Hamiltonian Monte Carlo as a pure init/step pair, batched over ``[B, C]`` chains.

In the style of blackjax's ``mcmc/hmc.py``: a kernel is ``init(position, density_fn) ->
HMCState`` and ``step(state, density_fn, momentum, log_uniform, step_size, n_leapfrog) ->
(HMCState, HMCInfo)``. The integrator (:func:`leapfrog`) is separate. The kernel draws no
random numbers: the caller passes the momentum and the accept/reject uniform (evalkit draws
them from per-datapoint streams, :mod:`evalkit.noise`), and adapts step sizes outside.

``density_fn(position) -> (log_density, grad, aux)`` returns the log-density ``[B, C]`` (float64),
its gradient in ``position`` (the position's shape and dtype) and anything else the caller wants
kept with the state (AIS keeps both endpoint densities, so that changing the temperature needs
no new model evaluation). :func:`value_and_grad` makes such a function from a differentiable one.

Every operation is row-wise (chain ``(b, c)`` depends only on its own inputs), so a chain's
result does not depend on how many chains share the call.

References
----------
.. [1] R. M. Neal (2011), "MCMC using Hamiltonian dynamics", Handbook of MCMC, ch. 5.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor

DensityFn = Callable[[Tensor], tuple[Tensor, Tensor, Any]]


class HMCState(NamedTuple):
    """Where a batch of chains is: position ``[B, C, *event]``, log-density ``[B, C]`` float64, its gradient, aux."""

    position: Tensor
    log_density: Tensor
    grad: Tensor
    aux: Any = None


class HMCInfo(NamedTuple):
    """What a transition did, per chain ``[B, C]``: Metropolis acceptance probability (float64) and whether it moved."""

    acceptance_prob: Tensor
    accepted: Tensor


def value_and_grad(log_density: Callable[[Tensor], Tensor]) -> DensityFn:
    """Return ``density_fn`` for a differentiable ``log_density(position) -> [B, C]`` (autograd; aux None)."""
    def density_fn(position: Tensor) -> tuple[Tensor, Tensor, Any]:
        with torch.enable_grad():
            position = position.detach().requires_grad_(True)
            value = log_density(position)
            (grad,) = torch.autograd.grad(value.sum(), position)
        return value.detach().double(), grad, None

    return density_fn


def init(position: Tensor, density_fn: DensityFn) -> HMCState:
    """Return the state at ``position`` (one evaluation of ``density_fn``)."""
    log_density, grad, aux = density_fn(position)
    return HMCState(position.detach(), log_density, grad, aux)


def _per_chain(step_size: Tensor, position: Tensor) -> Tensor:
    """Broadcast a step size of shape ``[B, C]``, ``[B, 1]`` or scalar over the event dimensions."""
    step_size = torch.as_tensor(step_size, dtype=position.dtype, device=position.device)
    return step_size.reshape(step_size.shape + (1,) * (position.dim() - step_size.dim()))


def leapfrog(state: HMCState, momentum: Tensor, step_size: Tensor, n_steps: int,
             density_fn: DensityFn) -> tuple[HMCState, Tensor]:
    """Run ``n_steps`` leapfrog steps from ``(state.position, momentum)``; return the end state and momentum.

    Velocity Verlet: half a momentum step, then ``n_steps`` alternations of a full position step
    and a full momentum step (the last one a half step). ``n_steps`` gradient evaluations; the
    end state carries the log-density and gradient at the end position.
    """
    eps = _per_chain(step_size, state.position)
    position, grad = state.position, state.grad
    momentum = momentum + 0.5 * eps * grad
    log_density, aux = state.log_density, state.aux
    for i in range(n_steps):
        position = position + eps * momentum
        log_density, grad, aux = density_fn(position)
        momentum = momentum + (eps if i < n_steps - 1 else 0.5 * eps) * grad
    return HMCState(position.detach(), log_density, grad, aux), momentum


def kinetic_energy(momentum: Tensor, n_batch_dims: int = 2) -> Tensor:
    """Return ``|p|^2 / 2`` over the event dimensions in float64, shape ``momentum.shape[:n_batch_dims]``."""
    return 0.5 * momentum.double().flatten(n_batch_dims).square().sum(-1)


def step(state: HMCState, density_fn: DensityFn, momentum: Tensor, log_uniform: Tensor,
         step_size: Tensor, n_leapfrog: int) -> tuple[HMCState, HMCInfo]:
    """Make one HMC transition of every chain.

    Parameters
    ----------
    state : HMCState
        Position ``[B, C, *event]``.
    density_fn : callable
        ``position -> (log_density [B, C] float64, grad, aux)``: the target of this transition.
    momentum : Tensor, shape like ``state.position``
        A standard-normal draw (identity mass matrix).
    log_uniform : Tensor, shape (B, C), float64
        ``log u`` with ``u ~ U(0, 1)``: the move is accepted when ``log u < -Delta H``.
    step_size : Tensor, shape (B, C), (B, 1) or scalar
        Leapfrog step size per chain.
    n_leapfrog : int
        Leapfrog steps (gradient evaluations) per transition.

    Returns
    -------
    (HMCState, HMCInfo)
        The new state (the old one where rejected) and, per chain, ``min(1, exp(-Delta H))``
        and the accept flag.

    Notes
    -----
    ``Delta H = H(end) - H(start)``, ``H = -log f(z) + |p|^2 / 2``, in float64. A proposal whose
    energy is not finite (a divergence) is rejected with acceptance probability 0, which keeps
    the kernel reversible with respect to f.
    """
    proposal, end_momentum = leapfrog(state, momentum, step_size, n_leapfrog, density_fn)
    log_accept = (proposal.log_density - kinetic_energy(end_momentum)) - (state.log_density - kinetic_energy(momentum))
    log_accept = torch.where(torch.isnan(log_accept), torch.full_like(log_accept, -torch.inf), log_accept)
    accepted = log_uniform < log_accept
    new_state = HMCState(
        _select(accepted, proposal.position, state.position),
        torch.where(accepted, proposal.log_density, state.log_density),
        _select(accepted, proposal.grad, state.grad),
        _select_aux(accepted, proposal.aux, state.aux),
    )
    return new_state, HMCInfo(log_accept.clamp(max=0).exp(), accepted)


def _select(accepted: Tensor, new: Tensor, old: Tensor) -> Tensor:
    mask = accepted.reshape(accepted.shape + (1,) * (new.dim() - accepted.dim()))
    return torch.where(mask, new, old)


def _select_aux(accepted: Tensor, new: Any, old: Any) -> Any:
    """Select per chain inside ``aux`` (None, a tensor or a tuple of tensors shaped ``[B, C, ...]``)."""
    if new is None:
        return None
    if isinstance(new, Tensor):
        return _select(accepted, new, old)
    values = [_select_aux(accepted, n, o) for n, o in zip(new, old)]
    return type(new)(*values) if hasattr(new, "_fields") else tuple(values)


__all__ = ["DensityFn", "HMCInfo", "HMCState", "init", "kinetic_energy", "leapfrog", "step", "value_and_grad"]
