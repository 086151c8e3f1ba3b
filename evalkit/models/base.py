"""The model protocol and the encoder/prior/decoder base class.

A model is a :class:`torch.nn.Module` with

* ``noise_shape: tuple[int, ...]`` -- shape of the standard-normal noise one importance sample
  needs (``(latent_dim,)``; two stochastic layers: ``(d1 + d2,)``);
* ``data_dim: int`` -- length of a (flattened) datapoint;
* ``requires_binary_data: bool`` -- True for Bernoulli decoders;
* ``log_weights(x, noise) -> Tensor[B, k]`` with ``x: [B, data_dim]`` and
  ``noise: [B, k, *noise_shape]`` standard normal, drawn by the engine, returning
  ``log p(x, z) - log q(z | x)`` at ``z = reparameterised(noise)``.

The engine owns randomness: a model never draws random numbers, so its log-weights are a
deterministic function of ``(x, noise)`` and evalkit can make them independent of batching.

Annealed importance sampling (:mod:`evalkit.sampling.ais`) needs three more methods, the same
names as :class:`EncoderDecoderModel`'s factories (which derives the first from the others):

* ``log_joint(x, z) -> Tensor[B, C]`` -- the full normalised ``log p(x, z)`` (float64),
  differentiable in ``z``, for ``x: [B, data_dim]`` and ``z: [B, C, *latent_shape]`` (``C``
  chains per datapoint); rows independent, like ``log_weights``;
* ``proposal(x) -> Distribution`` -- q(z | x), batch shape ``[B]``, event shape the latent's:
  AIS's default initial distribution;
* ``prior() -> Distribution`` -- p(z), batch shape ``[]`` (``init="prior"``).

The initial distribution's ``log_prob`` must be differentiable, and its samples are made from
evalkit's standard-normal noise by ``reparameterize(q, noise)`` (``noise: [B, C, *latent]``),
which :class:`EncoderDecoderModel` provides for (Independent) Normal and multivariate normal
families; :func:`evalkit.models.joint.check_ais_model` says what a model lacks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import (
    Distribution,
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
)

from ..errors import InputError


class LatentVariableModel(nn.Module):
    """Base class of evalkit's models: the protocol attributes and ``log_weights``.

    Subclasses set ``noise_shape``, ``data_dim`` and ``requires_binary_data`` in ``__init__``
    and implement :meth:`log_weights`. Built-in models also implement :meth:`get_config` so
    that :func:`evalkit.save_model` can store them.
    """

    noise_shape: tuple[int, ...]
    data_dim: int
    requires_binary_data: bool = False

    def log_weights(self, x: Tensor, noise: Tensor) -> Tensor:
        """Return log-weights ``log p(x, z) - log q(z | x)``.

        Parameters
        ----------
        x : Tensor, shape (B, data_dim)
        noise : Tensor, shape (B, k, *noise_shape)
            Standard-normal noise; sample ``i`` of datapoint ``b`` is ``z = T(noise[b, i]; x[b])``.

        Returns
        -------
        Tensor, shape (B, k)
        """
        raise NotImplementedError

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        return self.log_weights(x, noise)

    def get_config(self) -> dict[str, Any]:
        """Return the JSON-serialisable constructor arguments (built-in models only)."""
        raise NotImplementedError(f"{type(self).__name__} does not define get_config().")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "LatentVariableModel":
        """Return a model built from :meth:`get_config`'s output (weights not loaded)."""
        return cls(**config)


class EncoderDecoderModel(LatentVariableModel):
    """A latent-variable model given by three ``torch.distributions`` factories.

    Subclasses implement

    * ``proposal(x)`` -> q(z | x), batch shape ``[B]``, event shape the latent's shape;
    * ``prior()`` -> p(z), batch shape ``[]``;
    * ``likelihood(z)`` -> p(x | z) for ``z: [B, k, *latent]``, batch shape ``[B, k]``, event
      shape ``[data_dim]`` (or any shape with ``data_dim`` elements: ``x`` is reshaped to it);

    and set ``noise_shape``, ``data_dim``, ``requires_binary_data``. Then

    .. math::

        \\log w_{bi} = \\log p(x_b \\mid z_{bi}) + \\log p(z_{bi}) - \\log q(z_{bi} \\mid x_b),
        \\qquad z_{bi} = \\mathrm{reparameterize}(q(\\cdot \\mid x_b), \\varepsilon_{bi}).

    Each term is a full normalised log-density reduced over its event in the compute dtype;
    the three terms are cast to float64 before they are combined.
    """

    def proposal(self, x: Tensor) -> Distribution:
        raise NotImplementedError

    def prior(self) -> Distribution:
        raise NotImplementedError

    def likelihood(self, z: Tensor) -> Distribution:
        raise NotImplementedError

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """Return ``log p(z) + log p(x | z)`` from :meth:`prior` and :meth:`likelihood`.

        Parameters
        ----------
        x : Tensor, shape (B, data_dim)
        z : Tensor, shape (B, C, *latent_shape)

        Returns
        -------
        Tensor, shape (B, C), float64
            Differentiable in ``z``; each term reduced over its event in the compute dtype.
        """
        return log_joint_from_factories(self, x, z)

    def reparameterize(self, q: Distribution, noise: Tensor) -> Tensor:
        """Map standard-normal noise to samples of the proposal.

        Parameters
        ----------
        q : Distribution
            ``proposal(x)``, batch shape ``[B]``.
        noise : Tensor, shape (B, k, *noise_shape)

        Returns
        -------
        Tensor, shape (B, k, *q.event_shape)
            ``loc + scale * noise`` for (Independent) Normal; ``loc + L @ noise`` with
            ``L = scale_tril`` for MultivariateNormal and LowRankMultivariateNormal.

        Notes
        -----
        Override this for other families (the noise must stay standard normal: transform it,
        e.g. ``torch.special.ndtr(noise)`` gives uniforms for an inverse-CDF sampler).
        The matrix product is written as a broadcast multiply and a sum over the last
        dimension, not a batched matmul, so that every sample's value does not depend on how
        many samples share the call.
        """
        base = q
        while isinstance(base, Independent):
            base = base.base_dist
        full_shape = q.batch_shape + q.event_shape
        if isinstance(base, Normal):
            loc = base.loc.expand(full_shape).unsqueeze(1)
            scale = base.scale.expand(full_shape).unsqueeze(1)
            return loc + scale * noise
        if isinstance(base, (MultivariateNormal, LowRankMultivariateNormal)):
            loc = base.loc.expand(full_shape).unsqueeze(1)
            scale_tril = base.scale_tril.expand(full_shape + base.event_shape[-1:]).unsqueeze(1)
            return loc + (scale_tril * noise.unsqueeze(-2)).sum(-1)
        raise InputError(
            f"{type(self).__name__}.reparameterize has no default for a {type(base).__name__} proposal; "
            "override reparameterize(q, noise) to map standard-normal noise to samples of q."
        )

    def log_weights(self, x: Tensor, noise: Tensor) -> Tensor:
        n_batch, n_samples = noise.shape[0], noise.shape[1]
        q = self.proposal(x)
        if tuple(q.batch_shape) != (n_batch,):
            raise InputError(
                f"{type(self).__name__}.proposal(x) returned batch shape {tuple(q.batch_shape)} for {n_batch} "
                f"datapoints; it must be ({n_batch},) with the latent as event shape "
                "(wrap a Normal in torch.distributions.Independent(..., 1))."
            )
        z = self.reparameterize(q, noise)
        # torch.distributions broadcasts sample dimensions on the left: put k first for q.
        log_q = q.log_prob(z.movedim(1, 0)).movedim(0, 1)
        log_prior = self.prior().log_prob(z)
        log_likelihood = checked_log_likelihood(self, x, z)
        for name, term in (("log q(z|x)", log_q), ("log p(z)", log_prior)):
            if tuple(term.shape) != (n_batch, n_samples):
                raise InputError(
                    f"{name} has shape {tuple(term.shape)}, expected ({n_batch}, {n_samples}); give the proposal "
                    "batch shape [B] and the prior batch shape [] with the latent as event shape."
                )
        return log_likelihood.double() + log_prior.double() - log_q.double()


def working_bytes(per_point: Sequence[nn.Module], dtype: torch.dtype, *, extra_floats: int = 0) -> int:
    """Return a conservative working-memory size for one row through some MLP modules.

    Counts twice the output width of every ``Linear`` (an output and the activation made
    from it), once more the widest (the likelihood's temporaries over the logits), plus
    ``extra_floats``, in ``dtype``. Built-in models state their memory with it
    (``bytes_per_sample``) so that the engine need not measure it with probe calls.
    """
    widths = [layer.out_features for module in per_point for layer in module.modules() if isinstance(layer, nn.Linear)]
    floats = 2 * sum(widths) + max(widths, default=0) + extra_floats
    return floats * torch.empty((), dtype=dtype).element_size()


def standard_normal_prior(latent_dim: int, like: Tensor) -> Independent:
    """Return N(0, I) over ``latent_dim`` dimensions with ``like``'s dtype and device."""
    zeros = torch.zeros(latent_dim, dtype=like.dtype, device=like.device)
    return Independent(Normal(zeros, torch.ones_like(zeros), validate_args=False), 1)


@dataclass(frozen=True)
class ModelCheck:
    """What :func:`check_model` found: the protocol attributes and the optional hooks.

    ``str()`` of it is one sentence, e.g. ``MLPVAE follows the log-weight protocol:
    log_weights(x, noise), noise_shape (16,), data_dim 64, binary data; no exact log_marginal``.
    """

    name: str
    noise_shape: tuple
    data_dim: int
    requires_binary_data: bool
    data_levels: object  # int for a discrete decoder, else None
    has_log_marginal: bool

    def __str__(self) -> str:
        data = ("binary data" if self.requires_binary_data
                else f"integer data in 0..{self.data_levels - 1}" if isinstance(self.data_levels, int)
                else "real-valued data")
        marginal = ("an exact log_marginal(x) (sweep's reference)" if self.has_log_marginal
                    else "no exact log_marginal")
        return (f"{self.name} follows the log-weight protocol: log_weights(x, noise), noise_shape "
                f"{tuple(self.noise_shape)}, data_dim {self.data_dim}, {data}; {marginal}. The engine checks "
                "the shape and values of what log_weights returns when it runs the model.")


def check_model(model: object) -> ModelCheck:
    """Check that ``model`` follows the log-weight protocol; raise :class:`InputError` if not.

    Checks the attributes only (``noise_shape``, ``data_dim``, ``requires_binary_data``, a
    callable ``log_weights``); the engine checks the output shape when it runs the model.

    Returns
    -------
    ModelCheck
        What was checked and found (``print(check_model(model))`` says it in one sentence),
        including the optional ``data_levels`` and ``log_marginal``.
    """
    name = type(model).__name__
    if not isinstance(model, nn.Module):
        raise InputError(
            f"Expected a torch.nn.Module with log_weights(x, noise), got {name}; see docs/model-protocol.md."
        )
    if not callable(getattr(model, "log_weights", None)):
        inner = _inner_model(model)
        if inner is not None:
            raise InputError(
                f"{name} has no log_weights(x, noise); its attribute `{inner}` ({type(model.get_submodule(inner)).__name__}) "
                f"has one: build that in your factory (return the `{inner}` module; the checkpoint's '{inner}.' key "
                "prefix is then stripped), or pass it to evalkit directly."
            )
        raise InputError(
            f"{name} has no log_weights(x, noise) method; subclass evalkit.models.EncoderDecoderModel "
            "or implement log_weights (see docs/model-protocol.md)."
        )
    noise_shape = getattr(model, "noise_shape", None)
    if not isinstance(noise_shape, (tuple, list)) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in noise_shape
    ):
        raise InputError(
            f"{name}.noise_shape must be a tuple of positive ints (e.g. (latent_dim,)), got {noise_shape!r}; "
            "set it in __init__."
        )
    data_dim = getattr(model, "data_dim", None)
    if not isinstance(data_dim, int) or isinstance(data_dim, bool) or data_dim < 1:
        raise InputError(f"{name}.data_dim must be a positive int (the length of a datapoint), got {data_dim!r}.")
    if not isinstance(getattr(model, "requires_binary_data", None), bool):
        raise InputError(
            f"{name}.requires_binary_data must be True (Bernoulli decoder) or False, "
            f"got {getattr(model, 'requires_binary_data', None)!r}."
        )
    levels = getattr(model, "data_levels", None)
    return ModelCheck(name=name, noise_shape=tuple(noise_shape), data_dim=data_dim,
                      requires_binary_data=model.requires_binary_data,
                      data_levels=levels if isinstance(levels, int) and not isinstance(levels, bool) else None,
                      has_log_marginal=callable(getattr(model, "log_marginal", None)))


def _inner_model(model: nn.Module) -> "str | None":
    """Return the dotted name of the shallowest submodule of ``model`` with a callable ``log_weights``.

    A PyTorch Lightning module (or any training wrapper) typically holds the VAE as an attribute
    (``self.vae``); this finds it so that the error can say what to build instead. Among
    submodules at the same depth, the first registered wins; ``None`` if there is none.
    """
    found = [(name.count("."), order, name) for order, (name, module) in enumerate(model.named_modules())
             if name and callable(getattr(module, "log_weights", None))]
    return min(found)[2] if found else None


def log_joint_from_factories(model, x: Tensor, z: Tensor) -> Tensor:
    """Return ``prior().log_prob(z) + likelihood(z).log_prob(x)``, shape ``[B, C]``, float64.

    Parameters
    ----------
    model : has ``prior()`` (batch shape ``[]``) and ``likelihood(z)`` (batch shape ``[B, C]``)
    x : Tensor, shape (B, data_dim)
    z : Tensor, shape (B, C, *latent_shape)
    """
    n_batch, n_chains = z.shape[0], z.shape[1]
    log_prior = model.prior().log_prob(z)
    log_likelihood = checked_log_likelihood(model, x, z)
    if tuple(log_prior.shape) != (n_batch, n_chains):
        raise InputError(
            f"{type(model).__name__}.prior().log_prob(z) has shape {tuple(log_prior.shape)}, expected "
            f"({n_batch}, {n_chains}); give the prior batch shape [] with the latent as event shape."
        )
    return log_prior.double() + log_likelihood.double()


def checked_log_likelihood(model, x: Tensor, z: Tensor) -> Tensor:
    """``model.likelihood(z).log_prob(x)``, shape ``[B, S]`` in the compute dtype, after checking the shapes.

    ``x``: ``[B, data_dim]``; ``z``: ``[B, S, *latent_shape]`` (S samples or chains). The likelihood
    must have batch shape ``[B, S]`` and ``data_dim`` elements as its event.
    """
    n_batch, n_samples = z.shape[0], z.shape[1]
    likelihood = model.likelihood(z)
    if tuple(likelihood.batch_shape) != (n_batch, n_samples) or math.prod(likelihood.event_shape) != x.shape[1]:
        raise InputError(
            f"{type(model).__name__}.likelihood(z) returned batch shape {tuple(likelihood.batch_shape)} and "
            f"event shape {tuple(likelihood.event_shape)}; for z of shape {tuple(z.shape)} it must be "
            f"({n_batch}, {n_samples}) with {x.shape[1]} data elements as event shape "
            "(wrap it in torch.distributions.Independent)."
        )
    return likelihood.log_prob(x.reshape(n_batch, 1, *likelihood.event_shape))
