"""What annealed importance sampling needs from a model: the log joint and an initial distribution.

See the protocol in :mod:`evalkit.models.base`. These helpers check a model for it and apply
it the same way to every model, so that :mod:`evalkit.sampling.ais` never asks what a model is.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from ..errors import InputError
from .base import EncoderDecoderModel

AIS_METHODS = ("log_joint", "proposal", "prior")
INITS = ("proposal", "prior")


def _implemented(model: object, name: str) -> bool:
    """True when ``model.name`` is callable and not the base class's NotImplementedError stub."""
    method = getattr(type(model), name, None) or getattr(model, name, None)
    if not callable(method):
        return False
    return not (isinstance(model, EncoderDecoderModel) and name in ("proposal", "prior", "likelihood")
                and method is getattr(EncoderDecoderModel, name))


def check_ais_model(model: object, init: str = "proposal") -> None:
    """Raise :class:`InputError` unless ``model`` has what AIS from ``init`` needs.

    Needs ``log_joint(x, z)`` and ``proposal(x)`` (``init="proposal"``) or ``prior()``
    (``init="prior"``); an :class:`~evalkit.models.EncoderDecoderModel` has ``log_joint`` once
    it defines ``prior()`` and ``likelihood(z)``.
    """
    if init not in INITS:
        raise InputError(f"Expected argument `init` to be 'proposal' or 'prior', got {init!r}.")
    needed = ["log_joint", init] + (["prior", "likelihood"] if _is_factory_model(model) else [])
    missing = [name for name in dict.fromkeys(needed) if not _implemented(model, name)]
    if missing:
        raise InputError(
            f"{type(model).__name__} lacks {', '.join(m + '()' for m in missing)} needed by annealed importance "
            "sampling; add log_joint(x, z) -> log p(x, z) of shape [B, C], proposal(x) -> q(z|x) and prior() -> p(z) "
            "as torch.distributions, or subclass evalkit.models.EncoderDecoderModel (see evalkit.models.base)."
        )


def _is_factory_model(model: object) -> bool:
    return isinstance(model, EncoderDecoderModel) and type(model).log_joint is EncoderDecoderModel.log_joint


def initial_distribution(model, x: Tensor, init: str) -> Distribution:
    """Return AIS's initial distribution f_0 for the datapoints ``x``, batch shape ``[B]``.

    ``init="proposal"``: ``model.proposal(x)``; ``init="prior"``: ``model.prior()`` expanded
    to batch shape ``[B]``.
    """
    n_batch = x.shape[0]
    dist = model.proposal(x) if init == "proposal" else model.prior()
    if init == "prior" and tuple(dist.batch_shape) == ():
        dist = dist.expand(torch.Size([n_batch]))
    if tuple(dist.batch_shape) != (n_batch,):
        raise InputError(
            f"{type(model).__name__}.{init}() gave batch shape {tuple(dist.batch_shape)} for {n_batch} datapoints; "
            f"the {init} needs batch shape {'[B]' if init == 'proposal' else '[]'} with the latent as event shape "
            "(wrap a Normal in torch.distributions.Independent(..., 1))."
        )
    return dist


def initial_log_prob(dist: Distribution, z: Tensor) -> Tensor:
    """Return ``log f_0(z)`` for ``z: [B, C, *event]`` and ``dist`` of batch shape ``[B]``: ``[B, C]`` float64.

    torch.distributions broadcasts sample dimensions on the left, so the chains are moved first.
    """
    return dist.log_prob(z.movedim(1, 0)).movedim(0, 1).double()


def initial_log_prob_and_grad(dist: Distribution, z: Tensor) -> tuple[Tensor, Tensor]:
    """Return :func:`initial_log_prob` ``[B, C]`` (float64) and its gradient in ``z`` (``z``'s shape and dtype).

    Written out, with the same bits as autograd's gradient, for a diagonal Gaussian
    (``Independent(Normal, 1)``: ``-(1 / (2 sigma^2)) (2 (z - mu))``, the order in which
    autograd differentiates ``Normal.log_prob``) and for a distribution with its own
    ``log_prob_and_grad`` (:class:`~evalkit.models.gaussian_chain.GaussianChain`); by autograd
    otherwise. AIS takes this gradient at every leapfrog step, where autograd's bookkeeping cost
    about a tenth of a small model's evaluation.
    """
    moved = z.movedim(1, 0)
    own = getattr(dist, "log_prob_and_grad", None)
    if callable(own):
        result = own(moved)
        if result is not None:
            value, grad = result
            return value.movedim(0, 1).double(), grad.movedim(0, 1)
    if isinstance(dist, Independent) and dist.reinterpreted_batch_ndims == 1 and type(dist.base_dist) is Normal:
        normal = dist.base_dist
        difference = moved - normal.loc
        var = normal.scale ** 2
        grad = -(torch.ones_like(difference) / (2 * var)) * (2 * difference)
        return dist.log_prob(moved).movedim(0, 1).double(), grad.movedim(0, 1)
    with torch.enable_grad():
        leaf = z.detach().requires_grad_(True)
        value = initial_log_prob(dist, leaf)
        (grad,) = torch.autograd.grad(value.sum(), leaf)
    return value.detach(), grad


def initial_sample(model, dist: Distribution, noise: Tensor) -> Tensor:
    """Return samples of ``dist`` (batch ``[B]``) from standard-normal ``noise: [B, C, *event]``.

    Uses ``model.reparameterize(dist, noise)`` when the model has it, else the rule of
    :meth:`evalkit.models.EncoderDecoderModel.reparameterize` (Normal and multivariate normal).
    """
    reparameterize = getattr(model, "reparameterize", None)
    if callable(reparameterize):
        return reparameterize(dist, noise)
    return EncoderDecoderModel.reparameterize(model, dist, noise)


def latent_shape(dist: Distribution) -> tuple[int, ...]:
    """Return the event shape of the latent (of the initial distribution)."""
    return tuple(int(s) for s in dist.event_shape)


__all__ = ["AIS_METHODS", "check_ais_model", "initial_distribution", "initial_log_prob", "initial_log_prob_and_grad",
           "initial_sample",
           "latent_shape"]
