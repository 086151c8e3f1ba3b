r"""Weight priors and the softplus scale of Bayes-by-backprop networks.

Two priors over the weights ``w`` of a network (Blundell et al. 2015 [1]_), both factorised over
the weights, both full normalised log-densities:

* :class:`GaussianPrior` ``(sigma, mean=0)``: :math:`P(w) = \prod_j \mathcal N(w_j; m, \sigma^2)`;
* :class:`ScaleMixturePrior` ``(pi, sigma1, sigma2)``:
  :math:`P(w) = \prod_j [\pi \mathcal N(w_j; 0, \sigma_1^2) + (1 - \pi) \mathcal N(w_j; 0, \sigma_2^2)]`,
  evaluated as ``logsumexp`` of the two weighted component log-densities (never exp-then-log).

A prior is a small frozen dataclass with ``log_prob(w) -> Tensor`` (elementwise, same shape as
``w``) and ``get_config()``/:func:`prior_from_config` so that evalkit's own checkpoints store it.

References
----------
.. [1] C. Blundell, J. Cornebise, K. Kavukcuoglu, D. Wierstra, "Weight uncertainty in neural
   networks", ICML 2015.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Union

import torch
from torch import Tensor
from torch.distributions import Normal

from ..errors import InputError


def softplus_scale(rho: Tensor) -> Tensor:
    r"""Return :math:`\sigma = \log(1 + e^{\rho})` without overflow or loss for any ``rho``.

    Computed as ``max(rho, 0) + log1p(exp(-|rho|))``: exact to rounding for large positive
    ``rho`` (where ``torch.nn.functional.softplus`` switches to ``rho`` itself above 20 and
    drops ``exp(-rho)``, visible in float64) and for very negative ``rho`` (``log1p`` of a tiny
    number).
    """
    return rho.clamp(min=0) + torch.log1p(torch.exp(-rho.abs()))


def log_softplus_scale(rho: Tensor) -> Tensor:
    r"""Return :math:`\log \sigma = \log\log(1 + e^{\rho})`, finite for every finite ``rho``.

    For ``rho < -30``, :math:`\log\log(1 + t) = \log t - t/2 + O(t^2)` with :math:`t = e^{\rho}`
    (the neglected term is below 1e-26), which stays finite where ``exp(rho)`` underflows.
    """
    small = rho < -30
    safe = torch.where(small, torch.zeros_like(rho), rho)
    return torch.where(small, rho - 0.5 * torch.exp(rho), torch.log(softplus_scale(safe)))


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"Expected prior parameter `{name}` to be a positive finite number, got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class GaussianPrior:
    r"""Independent :math:`\mathcal N(m, \sigma^2)` on every weight and bias.

    Parameters
    ----------
    sigma : float
        Prior standard deviation, > 0.
    mean : float, default 0.0
        Prior mean ``m`` (bayesian-torch's ``prior_mean``; 0 for every other prior here).
    """

    sigma: float = 1.0
    mean: float = 0.0

    def __post_init__(self) -> None:
        _positive("sigma", self.sigma)
        if isinstance(self.mean, bool) or not isinstance(self.mean, (int, float)) or not math.isfinite(self.mean):
            raise InputError(f"Expected prior parameter `mean` to be a finite number, got {self.mean!r}.")

    def log_prob(self, w: Tensor) -> Tensor:
        """Return the elementwise log-density, shape of ``w``, in ``w``'s dtype."""
        mean = torch.full((), float(self.mean), dtype=w.dtype, device=w.device)
        return Normal(mean, float(self.sigma), validate_args=False).log_prob(w)

    def get_config(self) -> dict[str, Any]:
        # "mean" only when it is not 0, so that the configs saved before it existed stay the same.
        return {"kind": "gaussian", "sigma": float(self.sigma), **({"mean": float(self.mean)} if self.mean else {})}

    def describe(self) -> str:
        """The prior in words, e.g. ``"N(0, 1^2) per weight"``."""
        return f"N({self.mean:g}, {self.sigma:g}^2) per weight"


@dataclass(frozen=True)
class ScaleMixturePrior:
    r"""The scale mixture :math:`\pi \mathcal N(0, \sigma_1^2) + (1 - \pi) \mathcal N(0, \sigma_2^2)` per weight.

    Parameters
    ----------
    pi : float
        Weight of the first component, ``0 < pi < 1``.
    sigma1, sigma2 : float
        Component standard deviations (the paper's convention: ``sigma1 > sigma2``, a heavy
        component and one concentrated at 0; not enforced).

    Notes
    -----
    ``log_prob = logsumexp(log pi + log N(w; 0, s1^2), log(1 - pi) + log N(w; 0, s2^2))``,
    with ``log(1 - pi)`` as ``log1p(-pi)``.
    """

    pi: float = 0.5
    sigma1: float = 1.0
    sigma2: float = math.exp(-6.0)

    def __post_init__(self) -> None:
        if isinstance(self.pi, bool) or not isinstance(self.pi, (int, float)) or not 0 < self.pi < 1:
            raise InputError(f"Expected prior parameter `pi` to be in (0, 1), got {self.pi!r}.")
        _positive("sigma1", self.sigma1)
        _positive("sigma2", self.sigma2)

    def log_prob(self, w: Tensor) -> Tensor:
        """Return the elementwise log-density, shape of ``w``, in ``w``'s dtype."""
        zero = torch.zeros((), dtype=w.dtype, device=w.device)
        first = Normal(zero, float(self.sigma1), validate_args=False).log_prob(w) + math.log(self.pi)
        second = Normal(zero, float(self.sigma2), validate_args=False).log_prob(w) + math.log1p(-self.pi)
        return torch.logaddexp(first, second)

    def describe(self) -> str:
        """The prior in words, e.g. ``"0.5 N(0, 1^2) + 0.5 N(0, 0.00248^2) per weight"``."""
        return f"{self.pi:g} N(0, {self.sigma1:g}^2) + {1 - self.pi:g} N(0, {self.sigma2:.3g}^2) per weight"

    def get_config(self) -> dict[str, Any]:
        return {"kind": "scale_mixture", "pi": float(self.pi), "sigma1": float(self.sigma1), "sigma2": float(self.sigma2)}


Prior = Union[GaussianPrior, ScaleMixturePrior]


def prior_from_config(config: Union[Prior, Mapping[str, Any]]) -> Prior:
    """Return the prior described by ``{"kind": "gaussian", "sigma": ...}`` or
    ``{"kind": "scale_mixture", "pi": ..., "sigma1": ..., "sigma2": ...}`` (or a prior itself)."""
    if isinstance(config, (GaussianPrior, ScaleMixturePrior)):
        return config
    if isinstance(config, str):
        return parse_prior(config)
    if not isinstance(config, Mapping):
        raise InputError(f"Expected a prior as GaussianPrior, ScaleMixturePrior or a dict with 'kind', got {config!r}.")
    options = dict(config)
    kind = options.pop("kind", None)
    try:
        if kind == "gaussian":
            return GaussianPrior(**options)
        if kind == "scale_mixture":
            return ScaleMixturePrior(**options)
    except TypeError as err:
        raise InputError(f"prior {dict(config)!r} has parameters its kind does not take ({err}).") from None
    raise InputError(f"Expected prior kind 'gaussian' or 'scale_mixture', got {kind!r}.")


def parse_prior(text: str) -> Prior:
    """Return the prior written ``gaussian:SIGMA``, ``gaussian:MEAN,SIGMA`` or ``scale_mixture:PI,SIGMA1,SIGMA2``.

    The form the command line's ``--prior`` takes (``--prior gaussian:1``, ``--prior
    scale_mixture:0.5,1,0.0025``); the API's ``prior=`` also accepts it.
    """
    kind, _, numbers = str(text).partition(":")
    try:
        values = [float(part) for part in numbers.split(",")] if numbers else []
    except ValueError:
        values = None
    if kind == "gaussian" and values is not None and len(values) in (1, 2):
        return GaussianPrior(sigma=values[-1], mean=values[0] if len(values) == 2 else 0.0)
    if kind == "scale_mixture" and values is not None and len(values) == 3:
        return ScaleMixturePrior(*values)
    raise InputError(f"{text!r} is not a prior; write gaussian:SIGMA, gaussian:MEAN,SIGMA or "
                     "scale_mixture:PI,SIGMA1,SIGMA2 (e.g. gaussian:1 or scale_mixture:0.5,1,0.0025).")


__all__ = ["parse_prior", "GaussianPrior", "ScaleMixturePrior", "Prior", "prior_from_config", "softplus_scale", "log_softplus_scale"]
