r"""Bayes-by-backprop state_dicts of the libraries people train them with, and each library's prior.

Three layouts are recognised from the keys alone (:func:`bnn_layout`), every one with
:math:`\sigma = \log(1 + e^{\rho})` and one module per layer under any name (``NAME``):

``"bbb"``
    The widely copied PyTorch code: ``NAME.{weight_mu, weight_rho, bias_mu, bias_rho}``. Its
    prior is a Python object, not stored; the default is that code's scale mixture
    ``0.5 N(0, 1) + 0.5 N(0, e^-12)`` (:data:`evalkit.models.bnn.DEFAULT_PRIOR`).
``"blitz"``
    blitz-bayesian-pytorch's ``BayesianLinear`` (``blitz/modules/linear_bayesian_layer.py``):
    the same four keys plus the copies its ``TrainableRandomDistribution`` samplers hold
    (``blitz/modules/weight_sampler.py``): ``NAME.weight_sampler.{mu, rho, eps_w}`` and
    ``NAME.bias_sampler.{mu, rho, eps_w}``. The prior is not stored; the library's default is
    ``prior_pi = 1, prior_sigma_1 = 0.1``, i.e. :math:`\mathcal N(0, 0.1^2)` per weight. (blitz's
    own ``log_prior`` adds 1e-6 to the density inside the log and subtracts 0.5 per weight;
    evalkit evaluates the proper normalised density, so its ``log P(w)`` differs from blitz's
    ``log_prior`` by those terms.)
``"bayesian_torch"``
    bayesian-torch's ``LinearReparameterization``
    (``bayesian_torch/layers/variational_layers/linear_variational.py``):
    ``NAME.{mu_weight, rho_weight, mu_bias, rho_bias}``, and in files saved before bayesian-torch
    made its buffers non-persistent (July 2021) also ``NAME.{eps_weight, prior_weight_mu,
    prior_weight_sigma, eps_bias, prior_bias_mu, prior_bias_sigma}``. The default prior is
    ``prior_mean = 0, prior_variance = 1``; bayesian-torch fills ``prior_weight_sigma`` with
    ``prior_variance`` and uses it as the standard deviation (``kl_div`` in
    ``base_variational_layer.py``), so the prior is :math:`\mathcal N(m, s^2)` with ``m`` and ``s``
    read from the buffers where they are stored, else ``N(0, 1)``.

:func:`to_common_layout` renames any of them to the ``"bbb"`` keys; :func:`library_prior` gives
the layout's prior and a sentence saying where it came from. A state_dict records neither the
activation (ReLU is assumed; ``activation=`` / ``--activation`` say otherwise) nor, for blitz,
whether the biases were used (``bias=False`` still stores them; assumed used).
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor

from ..errors import CheckpointError
from .bnn_priors import GaussianPrior, Prior

COMMON_NAMES = ("weight_mu", "weight_rho", "bias_mu", "bias_rho")

PARAMETER_NAMES = {  # layout -> the library's name of each of COMMON_NAMES
    "bbb": dict(zip(COMMON_NAMES, COMMON_NAMES)),
    "blitz": dict(zip(COMMON_NAMES, COMMON_NAMES)),
    "bayesian_torch": dict(zip(COMMON_NAMES, ("mu_weight", "rho_weight", "mu_bias", "rho_bias"))),
}
REQUIRED_EXTRAS = {  # layout -> further keys every layer has
    "bbb": (),
    "blitz": ("weight_sampler.mu", "weight_sampler.rho", "weight_sampler.eps_w",
              "bias_sampler.mu", "bias_sampler.rho", "bias_sampler.eps_w"),
    "bayesian_torch": (),
}
OPTIONAL_EXTRAS = {  # layout -> keys a layer may have (persistent buffers of older versions)
    "bbb": (),
    "blitz": (),
    "bayesian_torch": ("eps_weight", "prior_weight_mu", "prior_weight_sigma", "eps_bias", "prior_bias_mu",
                       "prior_bias_sigma"),
}
BLITZ_COPIES = {"weight_sampler.mu": "weight_mu", "weight_sampler.rho": "weight_rho",
                "bias_sampler.mu": "bias_mu", "bias_sampler.rho": "bias_rho"}
LIBRARY_NAMES = {"bbb": "the common PyTorch Bayes-by-backprop code", "blitz": "blitz-bayesian-pytorch",
                 "bayesian_torch": "bayesian-torch"}
BLITZ_DEFAULT_PRIOR = GaussianPrior(sigma=0.1)
BAYESIAN_TORCH_DEFAULT_PRIOR = GaussianPrior(sigma=1.0)


def _split(key: str, suffixes: Sequence[str]) -> Optional[tuple[str, str]]:
    """``(layer, suffix)`` when ``key`` is ``<layer>.<suffix>`` for one of ``suffixes`` (longest first)."""
    for suffix in sorted(suffixes, key=len, reverse=True):
        if key.endswith("." + suffix) and len(key) > len(suffix) + 1:
            return key[: -len(suffix) - 1], suffix
    return None


def _matches(keys: Sequence[str], layout: str) -> bool:
    required = tuple(PARAMETER_NAMES[layout].values()) + REQUIRED_EXTRAS[layout]
    parsed = [_split(key, required + OPTIONAL_EXTRAS[layout]) for key in keys]
    if not keys or any(item is None for item in parsed):
        return False
    present = set(keys)
    layers = {layer for layer, _ in parsed}
    return all(f"{layer}.{name}" in present for layer in layers for name in required)


def bnn_layout(keys: Sequence[str]) -> Optional[str]:
    """Return ``"bbb"``, ``"blitz"`` or ``"bayesian_torch"`` when every key of a state_dict belongs to
    that layout's layers (each layer complete), else None."""
    keys = list(keys)
    for layout in ("bbb", "blitz", "bayesian_torch"):
        if _matches(keys, layout):
            return layout
    return None


def _layers(state_dict: Mapping[str, Tensor], layout: str) -> list[str]:
    """The layer names in the order the keys first name them (module registration order)."""
    anchor = PARAMETER_NAMES[layout]["weight_mu"]
    return list(dict.fromkeys(key[: -len(anchor) - 1] for key in state_dict if key.endswith("." + anchor)))


def to_common_layout(state_dict: Mapping[str, Tensor], layout: str) -> dict[str, Tensor]:
    """Return ``{NAME.weight_mu, NAME.weight_rho, NAME.bias_mu, NAME.bias_rho}`` of a state_dict in ``layout``.

    blitz's sampler copies must equal the layer's own tensors (they share storage in the library);
    bayesian-torch's ``eps_*`` (the last noise drawn) and ``prior_*`` buffers are dropped here
    (the prior is :func:`library_prior`'s).

    Raises
    ------
    CheckpointError
        A blitz copy that differs from the tensor it copies.
    """
    names = PARAMETER_NAMES[layout]
    out = {}
    for layer in _layers(state_dict, layout):
        if layout == "blitz":
            for copy, original in BLITZ_COPIES.items():
                if not torch.equal(state_dict[f"{layer}.{copy}"], state_dict[f"{layer}.{original}"]):
                    raise CheckpointError(
                        f"blitz layer '{layer}' has '{copy}' different from '{original}' (blitz keeps them the same "
                        "tensor), so the file was edited or damaged; re-save it from the trained model.")
        for common, own in names.items():
            out[f"{layer}.{common}"] = state_dict[f"{layer}.{own}"]
    return out


def _constant(tensors: Sequence[Tensor], what: str) -> Optional[float]:
    """The one value every element of ``tensors`` holds, None when there are none; refuse several values."""
    if not tensors:
        return None
    values = torch.unique(torch.cat([t.detach().double().flatten() for t in tensors]))
    if values.numel() != 1 or not math.isfinite(float(values[0])):
        raise CheckpointError(
            f"the bayesian-torch {what} buffers hold {values.numel()} different values ({values[:4].tolist()} ...), but "
            "evalkit uses one Gaussian prior for every weight; pass prior= (CLI: --prior gaussian:MEAN,SIGMA) to choose it.")
    return float(values[0])


def library_prior(state_dict: Mapping[str, Tensor], layout: str) -> tuple[Prior, str]:
    """``(prior, where it came from)`` for a state_dict in ``layout`` (module notes).

    For bayesian-torch, the ``prior_*_mu`` / ``prior_*_sigma`` buffers when the file has them
    (one mean and one standard deviation for every weight and bias; refused otherwise).
    """
    from .bnn import DEFAULT_PRIOR

    if layout == "blitz":
        return BLITZ_DEFAULT_PRIOR, "blitz-bayesian-pytorch's default: prior_pi = 1, prior_sigma_1 = 0.1"
    if layout == "bayesian_torch":
        mean = _constant([v for k, v in state_dict.items() if k.endswith(("prior_weight_mu", "prior_bias_mu"))], "prior mean")
        sigma = _constant([v for k, v in state_dict.items() if k.endswith(("prior_weight_sigma", "prior_bias_sigma"))],
                          "prior sigma")
        if mean is None and sigma is None:
            return BAYESIAN_TORCH_DEFAULT_PRIOR, "bayesian-torch's default: prior_mean = 0, prior_variance = 1"
        if sigma is not None and sigma <= 0:
            raise CheckpointError(f"the bayesian-torch prior sigma buffers hold {sigma}, not a positive standard deviation; "
                                  "pass prior= (CLI: --prior gaussian:SIGMA).")
        prior = GaussianPrior(sigma=1.0 if sigma is None else sigma, mean=0.0 if mean is None else mean)
        return prior, "read from the checkpoint's bayesian-torch prior_*_mu / prior_*_sigma buffers"
    return DEFAULT_PRIOR, "assumed: the common Bayes-by-backprop code's scale mixture, which the file does not store"


__all__ = ["bnn_layout", "to_common_layout", "library_prior", "COMMON_NAMES", "LIBRARY_NAMES",
           "BLITZ_DEFAULT_PRIOR", "BAYESIAN_TORCH_DEFAULT_PRIOR"]
