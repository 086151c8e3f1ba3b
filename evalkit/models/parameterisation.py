"""Say how an encoder parameterises its Gaussian: a log-variance, a log standard deviation or a scale.

Encoders trained with PyTorch Lightning, pythae and most VAE tutorials output a mean and a
**log-variance** (pythae calls it ``log_covariance``); others output a log standard deviation.
Both are unconstrained vectors of the same shape, so nothing in the numbers tells them apart, and
reading one as the other evaluates a different q(z | x): the log-weights are still those of *a*
proposal, IWAE stays a lower bound, and the estimate is silently off (by nats on a trained model).
:func:`diagonal_normal` makes the choice a keyword that must be given.

May import :mod:`evalkit.errors` only.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.distributions import Independent, Normal

from ..errors import InputError


def diagonal_normal(
    mean: Tensor,
    *,
    log_var: Optional[Tensor] = None,
    log_std: Optional[Tensor] = None,
    scale: Optional[Tensor] = None,
    event_dims: int = 1,
) -> Independent:
    """Return the diagonal Gaussian N(mean, diag(sigma^2)) for one named parameterisation of sigma.

    Parameters
    ----------
    mean : Tensor, shape (..., latent_dim)
        The encoder's mean.
    log_var : Tensor, shape broadcastable to ``mean``, optional
        log sigma^2 (the Lightning / pythae / Kingma & Welling convention): sigma = exp(log_var / 2).
    log_std : Tensor, shape broadcastable to ``mean``, optional
        log sigma: sigma = exp(log_std).
    scale : Tensor, shape broadcastable to ``mean``, optional
        sigma itself (positive), e.g. from a softplus.
    event_dims : int, default 1
        Number of trailing dimensions that form one latent vector (the event shape of the result).

    Returns
    -------
    torch.distributions.Independent
        ``Independent(Normal(mean, sigma), event_dims)``: batch shape ``mean.shape[:-event_dims]``,
        event shape ``mean.shape[-event_dims:]``; evalkit's ``reparameterize`` maps noise eps to
        ``mean + sigma * eps``.

    Raises
    ------
    InputError
        Unless exactly one of ``log_var``, ``log_std`` and ``scale`` is given.

    Notes
    -----
    sigma = exp(log_var / 2) is computed directly, never as sqrt(exp(log_var)), so that a
    log-variance of -200 gives sigma = e^-100 instead of underflowing to zero. The log-density
    is torch's full normalised one: sum_i [-(z_i - mu_i)^2 / (2 sigma_i^2) - log sigma_i - log(2 pi) / 2].

    Examples
    --------
    >>> mean, log_var = torch.zeros(2, 3), torch.full((2, 3), 2.0)
    >>> q = diagonal_normal(mean, log_var=log_var)
    >>> bool(torch.allclose(q.base_dist.scale, torch.exp(torch.tensor(1.0))))
    True
    """
    given = {name: value for name, value in (("log_var", log_var), ("log_std", log_std), ("scale", scale))
             if value is not None}
    if len(given) != 1:
        names = ", ".join(given) if given else "none"
        raise InputError(
            f"diagonal_normal needs exactly one of log_var=, log_std= or scale= (got {names}); name what your "
            "encoder outputs (Lightning and pythae encoders output a log-variance: log_var=)."
        )
    if not isinstance(event_dims, int) or isinstance(event_dims, bool) or not 0 <= event_dims <= mean.dim():
        raise InputError(f"Expected argument `event_dims` to be an int in [0, {mean.dim()}], got {event_dims!r}.")
    if log_var is not None:
        sigma = torch.exp(0.5 * log_var)
    elif log_std is not None:
        sigma = torch.exp(log_std)
    else:
        sigma = scale
    return Independent(Normal(mean, sigma), event_dims)


__all__ = ["diagonal_normal"]
