r"""Log-weight matrices of Bayes-by-backprop networks: predictive and evidence.

Weight sample ``k`` is ``w_k = mu + sigma * eps_k`` with ``eps_k`` the ``n_params`` standard
normals of the stream ``(seed, k)`` of purpose 2 (:func:`evalkit.noise.stream`), so sample ``k``
is the same whatever the sample chunk, the data batch or the device. Two sources:

* :func:`predictive_log_likelihoods` -- ``[N, K]``, entry ``(n, k) = log p(y_n | x_n, w_k)``, the
  SAME K samples for every test point. ``iwae`` of row n estimates
  :math:`\log p(y_n \mid x_n) = \log E_q[p(y_n \mid x_n, w)]`.
* :func:`evidence_log_weights` -- ``[1, K]``, entry ``k`` =
  :math:`\log p(D \mid w_k) + \log P(w_k) - \log q(w_k)`; its ``elbo`` is minus the variational
  free energy, its ``iwae``/``jvi`` estimate :math:`\log p(D)`. The data are streamed, so memory
  does not grow with N.

**Bitwise invariance.** CPU matrix products can give a row different last bits depending on
where it sits in the call and how many rows the call has. As in :mod:`evalkit.sampling.engine`, data
batches start at multiples of 32 in the dataset and every call is zero-padded to a multiple of
32 rows, so datapoint ``n`` always sits at a row congruent to ``n`` modulo 32; each weight
sample is its own matrix in a batched product. The evidence sums ``log p(y_n | x_n, w)`` over
the data in a fixed order: a fixed pairwise tree within each aligned block of 32 datapoints
(elementwise adds), then the blocks one after another in dataset order. The tests check
bitwise equality across batch sizes and sample chunks.
"""
from __future__ import annotations

import copy
from typing import Optional, Union

import torch
from torch import Tensor

from ..data import check_data_for_model
from .engine import _progress_bar, resolve_device
from .plan import ROW_ALIGN
from ..errors import InputError
from ..models.bnn import BayesianMLP
from ..noise import _PURPOSE_BNN_WEIGHTS, _STREAMS, check_seed

DEFAULT_BATCH_SIZE = 512
DEFAULT_MEMORY_BUDGET = 256 * 2**20
"""Bytes a sample chunk may use by default (noise, weights and activations)."""


def weight_noise(seed: int, k0: int, k1: int, n_params: int) -> Tensor:
    """Return the standard-normal noise of weight samples ``[k0, k1)``, shape (k1 - k0, n_params), float64.

    Row ``j`` is ``stream(seed, k0 + j, purpose=2).standard_normal(n_params)``: a fixed function
    of ``(seed, sample index)``.
    """
    seed = check_seed(seed)
    out = torch.empty((k1 - k0, n_params), dtype=torch.float64)
    buffer = out.numpy()
    for row, sample in enumerate(range(k0, k1)):
        _STREAMS.get(seed, sample, purpose=_PURPOSE_BNN_WEIGHTS).standard_normal(out=buffer[row])
    return out


def _check_model(model: object) -> BayesianMLP:
    if not isinstance(model, BayesianMLP):
        raise InputError(
            f"Expected a BayesianMLP (a Bayes-by-backprop network), got {type(model).__name__}; load one with "
            "evalkit.load_model or build evalkit.models.BayesianMLP."
        )
    return model


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"Expected argument `k` to be a positive int (weight samples), got {k!r}.")
    return k


def _plan(model: BayesianMLP, n: int, k: int, batch_size: Optional[int], sample_chunk: Optional[int]) -> tuple[int, int]:
    """Return (batch_size, sample_chunk): the batch a multiple of 32, the chunk from the memory budget."""
    for name, value in (("batch_size", batch_size), ("sample_chunk", sample_chunk)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"Expected argument `{name}` to be a positive int, got {value!r}.")
    rows = min(batch_size or DEFAULT_BATCH_SIZE, -(-n // ROW_ALIGN) * ROW_ALIGN)
    rows = -(-rows // ROW_ALIGN) * ROW_ALIGN
    if sample_chunk is None:
        element = model.layers[0].weight_mu.element_size()
        per_sample = 24 * model.n_params + 2 * element * rows * sum(model.sizes[1:])
        sample_chunk = max(1, min(k, DEFAULT_MEMORY_BUDGET // per_sample))
    return rows, min(sample_chunk, k)


def _prepare(model: object, x: Tensor, y: Tensor, k: object, device: object) -> tuple[BayesianMLP, Tensor, Tensor, int, torch.device]:
    model = _check_model(model)
    k = _check_k(k)
    check_data_for_model(x, model)
    model.check_targets(y, x.shape[0])
    device = resolve_device(device if device is not None else model.layers[0].weight_mu.device)
    if model.layers[0].weight_mu.device != device:
        model = copy.deepcopy(model).to(device)
    dtype = model.layers[0].weight_mu.dtype
    return model.eval(), x.to(device, dtype), y.to(device), k, device


def _padded(t: Tensor, n0: int, n1: int) -> Tensor:
    """Rows ``[n0, n1)`` of ``t``, zero-padded to a multiple of 32 rows."""
    rows = -(-(n1 - n0) // ROW_ALIGN) * ROW_ALIGN
    out = torch.zeros((rows, *t.shape[1:]), dtype=t.dtype, device=t.device)
    out[: n1 - n0] = t[n0:n1]
    return out


def _chunk_log_likelihoods(model: BayesianMLP, weights: list, x: Tensor, y: Tensor, n0: int, n1: int) -> Tensor:
    """``log p(y_n | x_n, w_s)`` for datapoints ``[n0, n1)``, shape (S, rows padded to 32), float64."""
    outputs = model.forward_weights(_padded(x, n0, n1), weights)
    return model.log_likelihood(outputs, _padded(y, n0, n1)).double()


def _check_finite(values: Tensor, n0: int, k0: int, what: str) -> None:
    bad = torch.isnan(values) | (values == float("inf"))
    if bool(bad.any()):
        samples, rows = bad.nonzero(as_tuple=True)
        raise InputError(
            f"the network gave NaN or +inf {what} for datapoints {sorted(set((rows + n0).tolist()))[:5]} at weight samples "
            f"{sorted(set((samples + k0).tolist()))[:5]}; check the model's parameters (mu, rho) and these datapoints."
        )


def predictive_log_likelihoods(
    model: BayesianMLP,
    x: Tensor,
    y: Tensor,
    *,
    k: int,
    seed: int = 0,
    batch_size: Optional[int] = None,
    sample_chunk: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    r"""Return ``log p(y_n | x_n, w_k)`` for K weight samples shared by all datapoints.

    Parameters
    ----------
    model : BayesianMLP
    x : Tensor, shape (N, data_dim)
    y : Tensor, shape (N,) class indices, or (N,) / (N, output_dim) regression targets
    k : int
        Weight samples (columns).
    seed : int, default 0
        Sample ``k`` uses the noise stream ``(seed, k)``.
    batch_size : int, optional
        Datapoints per call, rounded up to a multiple of 32 (default 512).
    sample_chunk : int, optional
        Weight samples per call (default: from a 256 MiB budget).
    device : str or torch.device, optional
        Default: the model's device.
    progress : bool, optional
        Show a progress bar over samples (None: only on a terminal, after a delay).

    Returns
    -------
    Tensor, shape (N, K), float64, CPU
        Bitwise the same for every ``batch_size`` and ``sample_chunk`` on the CPU.

    Notes
    -----
    Rows share the columns, so the Monte Carlo errors of the rows' estimates are correlated:
    the Monte Carlo SE of a dataset mean comes from
    :func:`evalkit.estimators.shared_columns.shared_column_mc_se`, not from ``sqrt(sum var_n) / N``.
    Cost: ``N K`` network passes; memory ``O(sample_chunk * (n_params + batch_size * width))``
    plus the ``N x K`` result.
    """
    model, x, y, k, device = _prepare(model, x, y, k, device)
    n = x.shape[0]
    rows, chunk = _plan(model, n, k, batch_size, sample_chunk)
    out = torch.empty((n, k), dtype=torch.float64)
    bar = _progress_bar(progress, k, desc="predictive", unit="sample")
    with torch.inference_mode(), bar:
        for k0 in range(0, k, chunk):
            k1 = min(k, k0 + chunk)
            weights = _compute_weights(model, weight_noise(seed, k0, k1, model.n_params).to(device))
            for n0 in range(0, n, rows):
                n1 = min(n, n0 + rows)
                values = _chunk_log_likelihoods(model, weights, x, y, n0, n1)[:, : n1 - n0]
                _check_finite(values, n0, k0, "log-likelihoods")
                out[n0:n1, k0:k1] = values.T.cpu()
            bar.update(k1 - k0)
    return out


def _compute_weights(model: BayesianMLP, noise: Tensor) -> list:
    """Weights in the model's dtype, made in float64 from the noise and then rounded."""
    dtype = model.layers[0].weight_mu.dtype
    return [(w.to(dtype), b.to(dtype)) for w, b in model.weights_from_noise(noise)]


def _add_in_fixed_order(total: Tensor, values: Tensor) -> Tensor:
    """Add ``values [S, 32 m]`` over dim 1 to ``total [S]`` in a fixed order: a pairwise tree per
    block of 32, then the blocks one after another onto ``total`` (so the grouping of blocks into
    calls does not matter)."""
    blocks = values.reshape(values.shape[0], -1, ROW_ALIGN)
    width = ROW_ALIGN
    while width > 1:
        width //= 2
        blocks = blocks[..., :width] + blocks[..., width:]
    for block in range(blocks.shape[1]):
        total = total + blocks[:, block, 0]
    return total


def evidence_log_weights(
    model: BayesianMLP,
    x: Tensor,
    y: Tensor,
    *,
    k: int,
    seed: int = 0,
    data_batch: Optional[int] = None,
    sample_chunk: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    r"""Return the log importance weights of the evidence, ``log p(D | w_k) + log P(w_k) - log q(w_k)``.

    Parameters
    ----------
    model, x, y, k, seed, sample_chunk, device, progress
        As for :func:`predictive_log_likelihoods` (the same ``(seed, k)`` gives the same weights).
    data_batch : int, optional
        Datapoints per call, rounded up to a multiple of 32 (default 512); only memory and
        speed depend on it, not the result.

    Returns
    -------
    Tensor, shape (1, K), float64, CPU
        One row: ``elbo`` of it is an unbiased estimate of
        :math:`E_q[\log p(D \mid w)] - \mathrm{KL}(q \,\|\, P) = -\mathcal F`, ``iwae``/``jvi``
        estimate :math:`\log p(D)` with O(1/K) / O(K^-(m+1)) bias.

    Notes
    -----
    :math:`\log p(D \mid w) = \sum_n \log p(y_n \mid x_n, w)` is accumulated in float64 in a fixed
    order (module notes); ``log q`` and ``log P`` are evaluated in float64 from the float64
    weights. Memory ``O(sample_chunk * (n_params + data_batch * width))``, independent of N.
    """
    model, x, y, k, device = _prepare(model, x, y, k, device)
    n = x.shape[0]
    rows, chunk = _plan(model, n, k, data_batch, sample_chunk)
    out = torch.empty((1, k), dtype=torch.float64)
    bar = _progress_bar(progress, k, desc="evidence", unit="sample")
    with torch.inference_mode(), bar:
        for k0 in range(0, k, chunk):
            k1 = min(k, k0 + chunk)
            noise = weight_noise(seed, k0, k1, model.n_params).to(device)
            exact = model.weights_from_noise(noise)
            weights = [(w.to(x.dtype), b.to(x.dtype)) for w, b in exact]
            total = torch.zeros(k1 - k0, dtype=torch.float64, device=device)
            for n0 in range(0, n, rows):
                n1 = min(n, n0 + rows)
                values = _chunk_log_likelihoods(model, weights, x, y, n0, n1)
                values[:, n1 - n0:] = 0.0
                _check_finite(values, n0, k0, "log-likelihoods")
                total = _add_in_fixed_order(total, values)
            log_w = total + model.log_prior(exact) - model.log_q_from_noise(noise)
            out[0, k0:k1] = log_w.cpu()
            bar.update(k1 - k0)
    return out


__all__ = ["predictive_log_likelihoods", "evidence_log_weights", "weight_noise"]
