r"""Bayes-by-backprop networks: weights as the latent variable (Blundell et al. 2015 [1]_).

A :class:`BayesianMLP` has :class:`BayesLinear` layers holding, per weight and bias, a mean
``mu`` and ``rho`` with :math:`\sigma = \log(1 + e^{\rho})` (the variational posterior
:math:`q(w) = \prod_j \mathcal N(w_j; \mu_j, \sigma_j^2)`), ReLU or tanh between layers, a prior
(:mod:`evalkit.models.bnn_priors`) and a likelihood:

* ``"categorical"``: :math:`p(y \mid x, w) = \mathrm{softmax}(f_w(x))_y` (classification,
  ``y`` a class index);
* ``"gaussian"``: :math:`p(y \mid x, w) = \mathcal N(y; f_w(x), s^2 I)` with the noise scale
  ``s`` given (regression, ``y`` of the output width).

**Weight samples come from noise.** One weight sample is a float64 vector ``eps`` of
:attr:`BayesianMLP.n_params` standard normals, laid out layer by layer as ``weight`` (row-major
``[out, in]``) then ``bias``; :meth:`BayesianMLP.weights_from_noise` maps ``S`` of them to
``w = mu + sigma * eps``. evalkit draws ``eps`` from the stream of ``(seed, sample index)``
(:func:`evalkit.sampling.bnn_weights.weight_noise`), so a sample is the same whatever the
batching. ``log q(w)`` is evaluated from ``eps`` directly,
:math:`\log q(w) = \sum_j [\log \mathcal N(\varepsilon_j; 0, 1) - \log \sigma_j]` (the change
of variables; no ``(w - mu) / sigma`` rounding).

**Checkpoints in the common layout.** The widely copied PyTorch code stores one module per layer
with ``weight_mu``, ``weight_rho`` (``[out, in]``), ``bias_mu``, ``bias_rho`` (``[out]``) under
the layer's attribute name (``l1.weight_mu``, ...). :func:`is_bbb_layout` recognises it,
:func:`config_from_bbb_state_dict` reads depth and sizes from the shapes and
:func:`bbb_state_dict_for_model` renames the keys to this module's (``layers.0.weight_mu``).

References
----------
.. [1] C. Blundell, J. Cornebise, K. Kavukcuoglu, D. Wierstra, "Weight uncertainty in neural
   networks", ICML 2015.
"""
from __future__ import annotations

import copy
import math
import re
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Independent, Normal

from ..errors import CheckpointError, DataError, InputError
from .bnn_priors import GaussianPrior, Prior, ScaleMixturePrior, log_softplus_scale, prior_from_config, softplus_scale

ACTIVATIONS = ("relu", "tanh")
LIKELIHOODS = ("categorical", "gaussian")
BBB_PARAMETER_NAMES = ("weight_mu", "weight_rho", "bias_mu", "bias_rho")

DEFAULT_PRIOR = ScaleMixturePrior(pi=0.5, sigma1=1.0, sigma2=math.exp(-6.0))
"""The prior of the widely copied code (PI = 0.5, SIGMA_1 = exp(0), SIGMA_2 = exp(-6))."""


class BayesLinear(nn.Module):
    r"""A linear layer with a diagonal Gaussian over its weights and biases.

    Parameters
    ----------
    in_features, out_features : int
    init_rho : float, default -5.0
        Initial ``rho`` (``sigma = softplus(-5) = 0.0067``); means start at
        ``U(-1/sqrt(in), 1/sqrt(in))`` like ``nn.Linear``.

    Attributes
    ----------
    weight_mu, weight_rho : Parameter, shape (out_features, in_features)
    bias_mu, bias_rho : Parameter, shape (out_features,)
    """

    def __init__(self, in_features: int, out_features: int, *, init_rho: float = -5.0) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight_mu = nn.Parameter(torch.empty(self.out_features, self.in_features).uniform_(-bound, bound))
        self.weight_rho = nn.Parameter(torch.full((self.out_features, self.in_features), float(init_rho)))
        self.bias_mu = nn.Parameter(torch.empty(self.out_features).uniform_(-bound, bound))
        self.bias_rho = nn.Parameter(torch.full((self.out_features,), float(init_rho)))

    @property
    def n_params(self) -> int:
        """Number of weights plus biases, ``out * (in + 1)``."""
        return self.out_features * (self.in_features + 1)

    def sample(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(W [S, out, in], b [S, out]) = mu + sigma * eps`` in ``eps``'s dtype.

        ``eps`` has shape ``(S, n_params)``: the weight noise row-major, then the bias noise.
        """
        n_weights = self.out_features * self.in_features
        dtype = eps.dtype
        eps_w = eps[:, :n_weights].reshape(-1, self.out_features, self.in_features)
        eps_b = eps[:, n_weights:]
        weight = self.weight_mu.to(dtype) + softplus_scale(self.weight_rho.to(dtype)) * eps_w
        bias = self.bias_mu.to(dtype) + softplus_scale(self.bias_rho.to(dtype)) * eps_b
        return weight, bias

    def log_sigma_sum(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """Return ``sum_j log sigma_j`` over weights and biases (a scalar)."""
        return log_softplus_scale(self.weight_rho.to(dtype)).sum() + log_softplus_scale(self.bias_rho.to(dtype)).sum()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InputError(f"Expected argument `{name}` to be one of {list(choices)}, got {value!r}.")
    return value


class BayesianMLP(nn.Module):
    r"""A Bayes-by-backprop multilayer perceptron with its prior and likelihood.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths ``[D_in, H_1, ..., D_out]`` (at least two); for ``"categorical"`` the last
        is the number of classes.
    activation : {"relu", "tanh"}, default "relu"
        Between layers (not after the last).
    likelihood : {"categorical", "gaussian"}, default "categorical"
    noise_scale : float, optional
        Standard deviation ``s`` of the Gaussian likelihood (required for it, refused otherwise).
    prior : GaussianPrior, ScaleMixturePrior or dict, optional
        Default :data:`DEFAULT_PRIOR`, the scale mixture ``0.5 N(0, 1) + 0.5 N(0, e^-12)``.
    init_rho : float, default -5.0

    Notes
    -----
    The three log-densities of a weight sample ``w`` (every one full and normalised):
    ``log q(w)`` (:meth:`log_q_from_noise`), ``log P(w)`` (:meth:`log_prior`) and, per datapoint,
    ``log p(y_n | x_n, w)`` (:meth:`log_likelihood` of :meth:`forward_weights`).
    """

    is_bayesian_network = True
    """Marks the model for consumers that choose a log-weight source (predictive or evidence)."""

    prior_note: Optional[str] = None
    """Where the prior came from when the loader knows (a library's default, the file's buffers,
    ``prior=``), for the outputs that name the prior; None for a network built in Python."""

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        activation: str = "relu",
        likelihood: str = "categorical",
        noise_scale: Optional[float] = None,
        prior: Optional[Union[Prior, Mapping[str, Any]]] = None,
        init_rho: float = -5.0,
    ) -> None:
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise InputError(f"Expected argument `sizes` to be at least two positive widths [in, ..., out], got {sizes}.")
        self.sizes = sizes
        self.activation = _check_choice("activation", activation, ACTIVATIONS)
        self.likelihood = _check_choice("likelihood", likelihood, LIKELIHOODS)
        if likelihood == "gaussian":
            if noise_scale is None or not math.isfinite(float(noise_scale)) or float(noise_scale) <= 0:
                raise InputError(f"the Gaussian likelihood needs a positive noise_scale (its standard deviation), got {noise_scale!r}.")
            noise_scale = float(noise_scale)
        elif noise_scale is not None:
            raise InputError(f"noise_scale={noise_scale!r} is for the Gaussian likelihood; leave it out for '{likelihood}'.")
        if likelihood == "categorical" and sizes[-1] < 2:
            raise InputError(f"a categorical likelihood needs at least 2 outputs (classes), got {sizes[-1]}.")
        self.noise_scale = noise_scale
        self.prior = DEFAULT_PRIOR if prior is None else prior_from_config(prior)
        self.init_rho = float(init_rho)
        self.layers = nn.ModuleList(BayesLinear(a, b, init_rho=init_rho) for a, b in zip(sizes[:-1], sizes[1:]))
        self.data_dim = sizes[0]
        self.output_dim = sizes[-1]

    @property
    def n_params(self) -> int:
        """Length of one weight sample's noise vector (all weights and biases)."""
        return sum(layer.n_params for layer in self.layers)

    # -- weights ----------------------------------------------------------------------------

    def weights_from_noise(self, noise: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Return each layer's ``(W [S, out, in], b [S, out]) = mu + sigma * eps`` in ``noise``'s dtype.

        Parameters
        ----------
        noise : Tensor, shape (S, n_params)
            Standard normals, layer by layer: weight (row-major), then bias.
        """
        if noise.dim() != 2 or noise.shape[1] != self.n_params:
            raise InputError(f"Expected weight noise of shape (S, {self.n_params}), got {tuple(noise.shape)}.")
        out, start = [], 0
        for layer in self.layers:
            out.append(layer.sample(noise[:, start:start + layer.n_params]))
            start += layer.n_params
        return out

    def log_q_from_noise(self, noise: Tensor) -> Tensor:
        r"""Return :math:`\log q(w_s)` per sample, shape (S,), float64, for ``w_s = mu + sigma * noise[s]``.

        :math:`\sum_j \log \mathcal N(\varepsilon_{sj}; 0, 1) - \sum_j \log \sigma_j`.
        """
        noise = noise.double()
        standard = Normal(torch.zeros((), dtype=torch.float64, device=noise.device), 1.0, validate_args=False)
        log_sigma = sum(layer.log_sigma_sum(torch.float64) for layer in self.layers)
        return standard.log_prob(noise).sum(dim=1) - log_sigma

    def log_prior(self, weights: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        """Return :math:`\\log P(w_s)` per sample, shape (S,), float64 (weights as from :meth:`weights_from_noise`)."""
        total = None
        for weight, bias in weights:
            term = self.prior.log_prob(weight.double()).flatten(1).sum(1) + self.prior.log_prob(bias.double()).sum(1)
            total = term if total is None else total + term
        return total

    # -- data -------------------------------------------------------------------------------

    def forward_weights(self, x: Tensor, weights: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        """Return the network outputs ``f_{w_s}(x)``, shape (S, T, output_dim), for ``x: [T, data_dim]``.

        Row ``t`` of the output depends only on ``x[t]`` and the sample's weights (no batch
        statistics). Each layer is one batched matrix product over the samples.
        """
        act = torch.relu if self.activation == "relu" else torch.tanh
        h = x
        for position, (weight, bias) in enumerate(weights):
            h = torch.matmul(h, weight.transpose(-1, -2)) + bias.unsqueeze(-2)
            if position < len(weights) - 1:
                h = act(h)
        return h

    def log_likelihood(self, outputs: Tensor, y: Tensor) -> Tensor:
        """Return ``log p(y_t | x_t, w_s)``, shape (S, T), in the outputs' dtype.

        Parameters
        ----------
        outputs : Tensor, shape (S, T, output_dim)
        y : Tensor, shape (T,) of class indices (categorical), or (T,) / (T, output_dim) (gaussian)
        """
        if self.likelihood == "categorical":
            return Categorical(logits=outputs, validate_args=False).log_prob(y.long())
        target = y.to(outputs.dtype).reshape(outputs.shape[1], self.output_dim)
        return Independent(Normal(outputs, self.noise_scale, validate_args=False), 1).log_prob(target)

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        """Outputs ``(S, T, output_dim)`` for inputs ``x: [T, data_dim]`` and weight noise ``(S, n_params)``."""
        return self.forward_weights(x, self.weights_from_noise(noise.to(self.layers[0].weight_mu.dtype)))

    # -- targets and config -----------------------------------------------------------------

    def check_targets(self, y: Tensor, n: int) -> None:
        """Check that targets ``y`` fit this model's likelihood for ``n`` datapoints; raise :class:`DataError` if not."""
        if not isinstance(y, Tensor):
            raise DataError(f"Expected the targets as a torch.Tensor, got {type(y).__name__}; use evalkit.data.load_labelled_data.")
        if self.likelihood == "categorical":
            if y.dim() != 1 or y.shape[0] != n:
                raise DataError(f"Expected one class label per datapoint, shape ({n},), got targets of shape {tuple(y.shape)}.")
            if y.is_floating_point() and not bool(torch.all(y == torch.round(y))):
                raise DataError("the class labels are not whole numbers; give integer labels 0..C-1 for a categorical model.")
            bad = ((y < 0) | (y >= self.output_dim)).nonzero().flatten()
            if len(bad):
                raise DataError(
                    f"labels must be in 0..{self.output_dim - 1} for this model's {self.output_dim} classes, but rows "
                    f"{bad[:5].tolist()} ({len(bad)} rows) hold {sorted(set(y[bad].tolist()))[:5]}; use the labels the model was trained on."
                )
            return
        if y.shape[0] != n or y[0].numel() != self.output_dim or y.dim() > 2:
            raise DataError(
                f"Expected regression targets of shape ({n},{' ' + str(self.output_dim) if self.output_dim > 1 else ''}) for "
                f"this model's {self.output_dim} outputs, got {tuple(y.shape)}."
            )
        bad = (~torch.isfinite(y.double().reshape(n, -1))).any(1).nonzero().flatten()
        if len(bad):
            raise DataError(f"the targets contain NaN or infinite values in rows {bad[:5].tolist()} ({len(bad)} rows); remove or fix them.")

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (the prior as a dict)."""
        return {"sizes": list(self.sizes), "activation": self.activation, "likelihood": self.likelihood,
                "noise_scale": self.noise_scale, "prior": self.prior.get_config(), "init_rho": self.init_rho}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "BayesianMLP":
        """Build the network from :meth:`get_config`'s output (weights not loaded)."""
        options = dict(config)
        return cls(options.pop("sizes"), **options)


def with_bnn_settings(model: "BayesianMLP", *, prior: Optional[Union[Prior, Mapping[str, Any], str]] = None,
                      activation: Optional[str] = None) -> "BayesianMLP":
    """Return ``model`` with another prior and/or activation (a shallow copy; ``model`` is unchanged).

    The weights are shared with ``model``. This is what ``prior=`` / ``activation=`` of
    :func:`evalkit.estimate` and ``--prior`` / ``--activation`` do, since a state_dict records
    neither (ReLU and the library's default prior are assumed when loading one).
    """
    if prior is None and activation is None:
        return model
    if not isinstance(model, BayesianMLP):
        given = " and ".join(name for name, value in (("prior", prior), ("activation", activation)) if value is not None)
        raise InputError(f"{given} (CLI: --{given.replace(' and ', ' and --')}) apply to Bayes-by-backprop networks "
                         f"(BayesianMLP), but the model is a {type(model).__name__}; leave them out.")
    changed = copy.copy(model)  # nn.Module's __dict__ copied: parameters shared, attributes replaceable
    if prior is not None:
        changed.prior = prior_from_config(prior)
        changed.prior_note = "given by prior= (CLI: --prior)"
    if activation is not None:
        changed.activation = _check_choice("activation", activation, ACTIVATIONS)
    return changed


# ----------------------------------------------------------------------------------------------
# The common PyTorch layout


def _layer_of(key: str) -> Optional[tuple[str, str]]:
    layer, _, name = key.rpartition(".")
    return (layer, name) if layer and name in BBB_PARAMETER_NAMES else None


def is_bbb_layout(keys: Sequence[str]) -> bool:
    """Return True when state_dict ``keys`` are all ``<layer>.{weight_mu, weight_rho, bias_mu, bias_rho}``,
    each layer having all four (any layer names, any prefix)."""
    keys = list(keys)
    parsed = [_layer_of(key) for key in keys]
    if not keys or any(item is None for item in parsed):
        return False
    layers = {layer for layer, _ in parsed}
    return len(keys) == 4 * len(layers) and all(f"{layer}.{name}" in set(keys) for layer in layers for name in BBB_PARAMETER_NAMES)


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def bbb_layer_names(state_dict: Mapping[str, Tensor]) -> list[str]:
    """Return the layer names of a common-layout state_dict in forward order.

    The order is the keys' (module registration order, as ``state_dict()`` writes them); if the
    shapes do not chain in that order (``in`` of a layer = ``out`` of the one before), natural
    sort order (``l2`` before ``l10``) is tried.

    Raises
    ------
    CheckpointError
        Not the layout, or shapes that chain in neither order.
    """
    if not is_bbb_layout(list(state_dict)):
        raise CheckpointError("the state_dict is not in the Bayes-by-backprop layout (<layer>.weight_mu, .weight_rho, .bias_mu, .bias_rho).")
    in_order = list(dict.fromkeys(_layer_of(key)[0] for key in state_dict))
    for names in (in_order, sorted(in_order, key=_natural_key)):
        shapes = [tuple(state_dict[f"{name}.weight_mu"].shape) for name in names]
        if all(len(s) == 2 for s in shapes) and all(a[0] == b[1] for a, b in zip(shapes[:-1], shapes[1:])):
            return names
    raise CheckpointError(
        f"the Bayes-by-backprop layers {in_order} have weight shapes "
        f"{[tuple(state_dict[n + '.weight_mu'].shape) for n in in_order]} that do not chain into one network "
        "([out, in] with each in equal to the previous out); build the model with factory= instead."
    )


def config_from_bbb_state_dict(
    state_dict: Mapping[str, Tensor],
    *,
    activation: str = "relu",
    likelihood: str = "categorical",
    noise_scale: Optional[float] = None,
    prior: Optional[Union[Prior, Mapping[str, Any]]] = None,
) -> dict[str, Any]:
    """Return :class:`BayesianMLP` constructor arguments for a common-layout state_dict.

    Sizes and depth come from the ``weight_mu`` shapes; the other options are not stored in such
    checkpoints (the priors of that code are plain Python objects) and default to ReLU, a
    categorical likelihood and :data:`DEFAULT_PRIOR`.
    """
    names = bbb_layer_names(state_dict)
    for name in names:
        shapes = {p: tuple(state_dict[f"{name}.{p}"].shape) for p in BBB_PARAMETER_NAMES}
        out_in = shapes["weight_mu"]
        if shapes["weight_rho"] != out_in or shapes["bias_mu"] != out_in[:1] or shapes["bias_rho"] != out_in[:1]:
            raise CheckpointError(f"layer '{name}' has inconsistent shapes {shapes}; expected weight [out, in] and bias [out].")
    sizes = [tuple(state_dict[f"{names[0]}.weight_mu"].shape)[1]] + [tuple(state_dict[f"{n}.weight_mu"].shape)[0] for n in names]
    prior = (DEFAULT_PRIOR if prior is None else prior_from_config(prior)).get_config()
    return {"sizes": sizes, "activation": activation, "likelihood": likelihood, "noise_scale": noise_scale, "prior": prior}


def bbb_state_dict_for_model(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename common-layout keys (``l1.weight_mu``) to :class:`BayesianMLP`'s (``layers.0.weight_mu``)."""
    names = bbb_layer_names(state_dict)
    return {f"layers.{i}.{p}": state_dict[f"{name}.{p}"] for i, name in enumerate(names) for p in BBB_PARAMETER_NAMES}


__all__ = [
    "BayesLinear", "BayesianMLP", "GaussianPrior", "ScaleMixturePrior", "DEFAULT_PRIOR", "ACTIVATIONS", "LIKELIHOODS",
    "is_bbb_layout", "bbb_layer_names", "with_bnn_settings", "config_from_bbb_state_dict", "bbb_state_dict_for_model",
]
