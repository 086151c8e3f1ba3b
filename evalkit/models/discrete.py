"""Decoders for discrete (8-bit and other integer-level) image data, as ``torch.distributions``.

Data values are integers ``v`` in ``0..levels-1`` (``levels = 256`` for 8-bit images, 17 for
the digits' native grey levels), stored in any dtype (integer or integer-valued float). Each
decoder decides its own scaling:

* :class:`DiscretizedLogistic` and :class:`DiscretizedLogisticMixture` (PixelCNN++ [1]_): bin
  centres ``c_v = 2 v / (levels - 1) - 1`` in ``[-1, 1]``, half-width ``h = 1 / (levels - 1)``;
  ``loc`` and ``scale`` live on that ``[-1, 1]`` scale. Probabilities of the ``levels`` values
  sum to one: the edge bins ``v = 0`` and ``v = levels - 1`` absorb the tails.
* :class:`PixelCategorical`: one free probability per value (logits over ``levels`` values).
* :class:`DequantizedDensity`: a continuous density ``p_y`` on ``y = (v + u) / levels`` in
  ``[0, 1]`` with ``u ~ U(0, 1)``, expressed on the integer scale ``w = v + u`` (so
  ``log p_w(w) = log p_y(w / levels) - log(levels)`` per dimension, nats on the integer
  lattice). It is *not* a probability of ``v``: by Jensen,

  .. math::

      \\log P(v) \\ge \\mathbb{E}_u[\\log p_w(v + u)]
                = \\mathbb{E}_u[\\log p_y((v + u)/L)] - D \\log L,
      \\qquad P(v) = \\int_{[0,1]^D} p_w(v + u)\\, du,

  where ``P(v)`` is the mass ``p_y`` puts on the bin of ``v`` (a proper distribution over the
  integer lattice when ``p_y`` lives on ``[0, 1]``; mass outside the unit cube is lost, so
  ``P`` sums to at most one). Sampling ``u`` jointly with ``z`` in importance sampling makes
  IWAE converge to ``log P(v)`` as ``K`` grows.

References
----------
.. [1] T. Salimans, A. Karpathy, X. Chen, D. P. Kingma, "PixelCNN++: Improving the PixelCNN
   with discretized logistic mixture likelihood and other modifications", ICLR 2017.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import (
    AffineTransform,
    Categorical,
    Distribution,
    MixtureSameFamily,
    TransformedDistribution,
    constraints,
)
from torch.distributions.utils import broadcast_all

from ..errors import InputError

Number = Union[int, float]


def _check_levels(levels: int) -> int:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise InputError(f"Expected argument `levels` to be an int >= 2 (256 for 8-bit data), got {levels!r}.")
    return levels


def bin_centres(value: Tensor, levels: int) -> Tensor:
    """Return the ``[-1, 1]`` bin centres ``c_v = 2 v / (levels - 1) - 1`` of integer values ``v``."""
    return value * (2.0 / (levels - 1)) - 1.0


def log_logistic_bin_mass(value: Tensor, loc: Tensor, scale: Tensor, levels: int) -> Tensor:
    """Return ``log P(v)`` of the discretised logistic, elementwise.

    Parameters
    ----------
    value : Tensor
        Integer values ``v`` in ``0..levels-1`` (floating dtype).
    loc, scale : Tensor, broadcastable to ``value``
        Location and scale on the ``[-1, 1]`` scale; ``scale > 0``.
    levels : int

    Returns
    -------
    Tensor, the broadcast shape

    Notes
    -----
    With bin edges ``e_hi = (2 v + 1) / (L - 1) - 1``, ``e_lo = (2 v - 1) / (L - 1) - 1`` and
    ``a = (e_hi - m) / s``, ``b = (e_lo - m) / s``,

    .. math::

        \\log(\\sigma(a) - \\sigma(b)) = \\log\\sigma(a) + \\log\\sigma(-b) + \\log(-\\mathrm{expm1}(b - a)),

    finite for every finite ``a > b`` (no difference of nearly equal probabilities). The edge
    bins are ``log sigma(a)`` (``v = 0``, ``b = -inf``) and ``log sigma(-b)`` (``v = L - 1``,
    ``a = +inf``). The edges are computed from ``2 v +- 1`` (exact in floating point), so the
    upper edge of ``v`` and the lower edge of ``v + 1`` are the same number and the
    probabilities telescope to one in any dtype, also for tiny ``s``.
    """
    upper = (value * 2 + 1) * (1.0 / (levels - 1)) - 1.0
    lower = (value * 2 - 1) * (1.0 / (levels - 1)) - 1.0
    a = (upper - loc) / scale
    b = (lower - loc) / scale
    interior = F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(b - a))
    first = F.logsigmoid(a)
    last = F.logsigmoid(-b)
    return torch.where(value <= 0, first, torch.where(value >= levels - 1, last, interior))


class DiscretizedLogistic(Distribution):
    """Logistic distribution discretised to the integers ``0..levels-1`` (PixelCNN++).

    .. math::

        P(v) = \\sigma\\Big(\\frac{c_v + h - m}{s}\\Big) - \\sigma\\Big(\\frac{c_v - h - m}{s}\\Big),
        \\quad c_v = \\frac{2v}{L - 1} - 1, \\quad h = \\frac{1}{L - 1},

    with ``c_0 - h = -inf`` and ``c_{L-1} + h = +inf`` (edge bins take the tails).

    Parameters
    ----------
    loc : Tensor
        ``m`` on the ``[-1, 1]`` scale of the bin centres (any real number).
    scale : Tensor
        ``s > 0``, same scale.
    levels : int, default 256
    validate_args : bool, optional

    Notes
    -----
    ``log_prob`` is :func:`log_logistic_bin_mass`. ``sample`` draws a continuous logistic
    variate and returns the bin it falls in.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = False

    def __init__(self, loc: Tensor, scale: Tensor, levels: int = 256, validate_args: Optional[bool] = None) -> None:
        self.levels = _check_levels(levels)
        self.loc, self.scale = broadcast_all(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self) -> constraints.Constraint:
        return constraints.integer_interval(0, self.levels - 1)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogistic, _instance)
        batch_shape = torch.Size(batch_shape)
        new.levels = self.levels
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        super(DiscretizedLogistic, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        value = torch.as_tensor(value, dtype=self.loc.dtype, device=self.loc.device)
        return log_logistic_bin_mass(value, self.loc, self.scale, self.levels)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
            y = self.loc + self.scale * (torch.log(u) - torch.log1p(-u))  # logistic on [-1, 1]
            v = torch.round((y + 1) * ((self.levels - 1) / 2))
            return v.clamp(0, self.levels - 1) + 0.0  # + 0.0 turns -0.0 into 0.0


class DiscretizedLogisticMixture(MixtureSameFamily):
    """Mixture of :class:`DiscretizedLogistic` components with shared ``levels``.

    .. math::

        \\log P(v) = \\operatorname{logsumexp}_j \\big(\\log \\pi_j + \\log P_j(v)\\big),
        \\qquad \\pi = \\operatorname{softmax}(\\text{logits}).

    Parameters
    ----------
    logits : Tensor, shape (..., n_components)
    loc, scale : Tensor, shape (..., n_components)
        Component locations and scales on the ``[-1, 1]`` scale.
    levels : int, default 256
    validate_args : bool, optional

    Notes
    -----
    A ``MixtureSameFamily`` (its ``log_prob`` is the logsumexp above); channels of colour
    images are independent given the decoder's output (no PixelCNN++ channel coupling).
    """

    def __init__(self, logits: Tensor, loc: Tensor, scale: Tensor, levels: int = 256,
                 validate_args: Optional[bool] = None) -> None:
        self.levels = _check_levels(levels)
        components = DiscretizedLogistic(loc, scale, levels, validate_args=validate_args)
        super().__init__(Categorical(logits=logits, validate_args=validate_args), components,
                         validate_args=validate_args)


class PixelCategorical(Categorical):
    """A free categorical distribution over the values ``0..levels-1`` of each pixel.

    Parameters
    ----------
    logits : Tensor, shape (..., levels)
        Unnormalised log-probabilities (normalised by ``log_softmax``); ``levels`` is the last
        dimension.
    validate_args : bool, optional

    Notes
    -----
    ``log_prob(v) = logits[v] - logsumexp(logits)``; a torch ``Categorical`` with ``levels``,
    normalised by ``log_softmax`` (the maximum subtracted first). torch's ``Categorical``
    subtracts the rounded ``logsumexp`` itself, whose float32 rounding for logits of size 1e3
    (about 3e-5) shifted every log-probability: the probabilities summed to 1 - 6e-5.
    """

    def __init__(self, logits: Tensor, validate_args: Optional[bool] = None) -> None:
        super().__init__(logits=logits, validate_args=validate_args)
        self.logits = torch.log_softmax(logits, dim=-1)
        self.levels = _check_levels(int(logits.shape[-1]))


class DequantizedDensity(TransformedDistribution):
    """A density on ``[0, 1]``-scaled data, re-expressed on the integer scale ``w = v + u``.

    For ``y = w / levels``,

    .. math::

        \\log p_w(w) = \\log p_y(w / L) - \\log L \\quad\\text{per dimension},

    so that ``E_u[log p_w(v + u)]`` (``u ~ U(0, 1)``) is a lower bound on ``log P(v)``, the log
    mass of the bin of ``v``, in nats on the integer lattice; summed over ``D`` dimensions this
    is ``E_u[log p_y(y)] - D log L``. The value passed to ``log_prob`` is ``w = v + u`` (not
    ``y`` and not ``v``).

    Parameters
    ----------
    base : Distribution
        Density of ``y`` (elementwise, event shape ``()``), e.g. ``Normal(loc, scale)`` or
        :func:`logistic` with ``loc`` in ``[0, 1]``.
    levels : int, default 256
    validate_args : bool, optional
    """

    def __init__(self, base: Distribution, levels: int = 256, validate_args: Optional[bool] = None) -> None:
        self.levels = _check_levels(levels)
        super().__init__(base, [AffineTransform(0.0, float(self.levels))], validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        return constraints.real


def logistic(loc: Tensor, scale: Tensor, validate_args: Optional[bool] = None) -> TransformedDistribution:
    """Return the continuous logistic distribution ``Logistic(loc, scale)``, elementwise.

    ``log p(y) = -t - 2 softplus(-t) - log s`` with ``t = (y - loc) / s``; built as the
    ``torch.distributions`` idiom ``Uniform(0, 1)`` pushed through the logit and an affine map.
    """
    from torch.distributions import SigmoidTransform, Uniform

    loc, scale = broadcast_all(loc, scale)
    zeros, ones = torch.zeros_like(loc), torch.ones_like(loc)
    return TransformedDistribution(Uniform(zeros, ones, validate_args=validate_args),
                                   [SigmoidTransform().inv, AffineTransform(loc, scale)], validate_args=validate_args)


def change_of_units(levels: int, dims: int) -> float:
    """Return ``-D log(levels)``, the nats added to ``sum log p_y`` on ``[0, 1]`` to express it on the integer lattice."""
    return -dims * math.log(_check_levels(levels))


__all__ = [
    "DequantizedDensity",
    "DiscretizedLogistic",
    "DiscretizedLogisticMixture",
    "PixelCategorical",
    "bin_centres",
    "change_of_units",
    "log_logistic_bin_mass",
    "logistic",
]
