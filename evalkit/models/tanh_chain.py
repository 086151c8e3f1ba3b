r"""Tanh MLPs evaluated through ``sigmoid`` on the CPU, with the constant factors folded into the weights.

A chain of linear layers with ``tanh`` between consecutive ones,

.. math::

    a_0 = h, \qquad a_i = \tanh(W_i a_{i-1} + b_i) \ (i < n), \qquad
    \text{out} = W_n a_{n-1} + b_n,

is evaluated with ``tanh(u) = 2 sigmoid(2u) - 1`` written as ``a_i = 2 c_i`` with the centred
``c_i = sigmoid(2 u_i) - 1/2``:

.. math::

    c_1 = \sigma(2 W_1 h + 2 b_1) - \tfrac12, \qquad
    c_i = \sigma(4 W_i c_{i-1} + 2 b_i) - \tfrac12, \qquad
    \text{out} = 2 W_n c_{n-1} + b_n,

so each hidden layer is one matmul, one in-place ``sigmoid`` and one in-place subtraction.
torch's CPU ``tanh`` goes through MKL's vector library at about 2.5 ns per element,
``sigmoid`` through torch's own SIMD code at 0.4 ns; :class:`evalkit.models.densities.Tanh`
already used the identity but spent four passes over every activation (``2x``, ``sigmoid``,
``2s``, ``- 1``) where this needs two. Weights and biases are only scaled by powers of two,
and rounding commutes with scaling by two, so every product, sum and ``sigmoid`` input is the
plain evaluation's times an exact power of two: the results equal
:class:`~evalkit.models.densities.Tanh`'s bit for bit (tested). (Folding the ``-1/2`` into
the next bias as well would save the subtraction, but was measured to double the float32
error of the trained example model, through cancellation against ``sum_j W_j``.) The scaled
weights are cached per module until a parameter changes (its storage or its version counter;
parameters created in inference mode have no version counter and are folded at every call).

Off the CPU (where ``tanh`` is a fast intrinsic) or while autograd records the parameters,
the plain modules run instead.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Layer = Union[nn.Linear, Sequence[nn.Linear]]
"""One layer of a chain: a Linear or, as the last layer only, several Linears on the same input (heads)."""

_CACHE_ATTRIBUTE = "_evalkit_sigmoid_form"


def _linears(layer: Layer) -> list[nn.Linear]:
    return [layer] if isinstance(layer, nn.Linear) else list(layer)


@torch.compiler.disable  # Python bookkeeping: traced, its loop over parameters hit dynamo's recompile limit
def _parameter_key(layers: Sequence[Layer]) -> tuple | None:
    """Identify the parameters' current values: storage, version counter, dtype, device; None if unknowable."""
    key = []
    for layer in layers:
        for linear in _linears(layer):
            for parameter in (linear.weight, linear.bias):
                if parameter.is_inference():
                    return None  # no version counter: an in-place change would go unseen
                key.append((parameter.data_ptr(), parameter._version, parameter.dtype, parameter.device))
    return tuple(key)


def _fold(layers: Sequence[Layer]) -> list[list[tuple[Tensor, Tensor]]]:
    """Return ``(weight, bias)`` per Linear per layer of the sigmoid form (module notes): powers of two times the originals."""
    folded = []
    last = len(layers) - 1
    for position, layer in enumerate(layers):
        pairs = []
        for linear in _linears(layer):
            weight, bias = linear.weight.detach(), linear.bias.detach()
            if position > 0:  # the input is c = a / 2
                weight = weight * 2
            if position < last:  # a sigmoid follows: feed it 2u
                weight, bias = weight * 2, bias * 2
            pairs.append((weight.contiguous(), bias.contiguous()))
        folded.append(pairs)
    return folded


def sigmoid_form_applies(h: Tensor, module: nn.Module) -> bool:
    """Return True when :func:`sigmoid_form` should evaluate ``module``'s chains on input ``h``.

    On the CPU only, and not while autograd records ``module``'s parameters (the folded
    parameters are cached, detached copies).
    """
    if h.device.type != "cpu":
        return False
    return not (torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters()))


def sigmoid_form(owner: nn.Module, name: str, layers: Sequence[Layer], h: Tensor) -> Tensor:
    """Return ``W_n tanh(... tanh(W_1 h + b_1) ...) + b_n`` for the linear ``layers``, in sigmoid form.

    Call it where :func:`sigmoid_form_applies`; elsewhere run the plain modules.

    Parameters
    ----------
    owner : nn.Module
        Module that keeps the cached folded parameters (under ``name``).
    name : str
        Name of this chain within ``owner``'s cache.
    layers : sequence of nn.Linear, the last may be a sequence of nn.Linear
        The chain's layers in order, ``tanh`` between consecutive ones and none after the
        last. A last layer given as several Linears (e.g. mean and log-scale heads) gives
        one output per Linear.
    h : Tensor, shape (..., in_features)

    Returns
    -------
    Tensor, shape (..., out_features), or a tuple of them for several heads
    """
    cache = owner.__dict__.setdefault(_CACHE_ATTRIBUTE, {})
    key = _parameter_key(layers)
    entry = cache.get(name)
    if key is None:
        entry = (None, _fold(layers))  # parameters made in inference mode: fold afresh, cache nothing
    elif entry is None or entry[0] != key:
        # Two threads may both fold on a first call; either result is the same.
        entry = cache[name] = (key, _fold(layers))
    *hidden_layers, heads = entry[1]
    for ((weight, bias),) in hidden_layers:
        h = F.linear(h, weight, bias).sigmoid_().sub_(0.5)
    outputs = tuple(F.linear(h, weight, bias) for weight, bias in heads)
    return outputs if not isinstance(layers[-1], nn.Linear) else outputs[0]


def chain_layers(sequential: nn.Sequential) -> list[nn.Linear] | None:
    """Return the Linears of a ``Linear, Tanh, Linear, ..., Linear[, Tanh]`` sequential, or None for another layout.

    With a trailing ``Tanh`` the caller's next layer (e.g. heads) continues the chain.
    """
    modules = list(sequential)
    linears, activations = modules[0::2], modules[1::2]
    if not linears or not all(type(m) is nn.Linear and m.bias is not None for m in linears):
        return None
    if not all(isinstance(m, nn.Tanh) for m in activations):
        return None
    return linears


__all__ = ["chain_layers", "sigmoid_form", "sigmoid_form_applies"]
