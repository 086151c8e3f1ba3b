"""Log-weights of a model by importance sampling from its proposal q(z | x).

Three ways to run the same computation, with bitwise the same rows for the same seed:

* :class:`ImportanceSamplingSource` -- the engine, one block of datapoints at a time, so that
  memory does not grow with N x K;
* :class:`CachedSource` -- through the resumable on-disk cache (:mod:`evalkit.sampling.cache`);
* :class:`TorchrunSource` -- split across torchrun's processes and gathered on rank 0.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch

from ..sampling import distributed
from ..sampling.blocks import engine_blocks
from .base import Block, LogWeightSource
from .matrix import MatrixSource


class ImportanceSamplingSource(LogWeightSource):
    """``log p(x_n, z) - log q(z | x_n)`` at K draws ``z ~ q(z | x_n)`` per datapoint, streamed.

    Parameters
    ----------
    model : Module
        A model following evalkit's protocol (``log_weights(x, noise)``).
    data : Tensor, shape (N, D)
        The rows to evaluate, already validated for ``model``.
    k : int
        Samples per datapoint.
    seed : int
        Seed of the per-datapoint streams.
    index : array of int, optional
        Dataset index of each row of ``data`` (its random stream); default ``0 .. N-1``.
    engine_options : dict
        Passed to :func:`evalkit.log_weights` (``batch_size``, ``device``, ``progress``, ...).
    model_label, data_label : str
        Descriptions for tables.
    sampler : callable, optional
        Replaces the engine's importance sampling from q(z | x): annealed importance sampling
        (:class:`evalkit.sources.annealed.AISSampler`, k = chains). Its ``summary()`` is the
        source's ``details``.
    """

    def __init__(self, model: torch.nn.Module, data: torch.Tensor, k: int, *, seed: int,
                 index: Optional[np.ndarray] = None, engine_options: Optional[Dict[str, Any]] = None,
                 model_label: Optional[str] = None, data_label: str = "data", sampler: Optional[Any] = None) -> None:
        self.model, self.data, self.k, self.seed = model, data, int(k), seed
        self.n = int(data.shape[0])
        self._given_index = None if index is None else np.asarray(index, dtype=np.int64)
        self.index = np.arange(self.n) if index is None else self._given_index
        self.engine_options = dict(engine_options or {})
        self.model_label, self.data_label = model_label, data_label
        self.sampler = sampler
        self.dims = model_dims(model, data)

    @property
    def details(self) -> Dict[str, Any]:
        """How the weights were drawn, beyond plain importance sampling (empty for the engine)."""
        return self.sampler.summary() if self.sampler is not None else {}

    @property
    def run_settings(self) -> Dict[str, Any]:
        options = self.engine_options
        return {"device": options.get("device"), "dtype": options.get("dtype"), "threads": options.get("threads")}

    def blocks(self, rows: int) -> Iterator[Block]:
        # Each block draws the streams of its own dataset indices: bitwise the rows of one call.
        return engine_blocks(self.model, self.data, self.k, seed=self.seed, rows=rows,
                             engine_options=self.engine_options, indices=self._given_index, sampler=self.sampler)

    @property
    def has_exact_log_marginal(self) -> bool:
        return hasattr(self.model, "log_marginal")

    def exact_log_marginal(self) -> Optional[np.ndarray]:
        if not self.has_exact_log_marginal:
            return None
        with torch.inference_mode():
            values = self.model.log_marginal(self.data)
        return values.detach().to("cpu", torch.float64).numpy() if isinstance(values, torch.Tensor) \
            else np.asarray(values, dtype=np.float64)


def model_dims(model: Any, data: torch.Tensor) -> int:
    """D of bits per dimension: the model's ``data_dim`` (C x H x W for images), else the data's width."""
    dims = getattr(model, "data_dim", None)
    return int(dims) if isinstance(dims, (int, np.integer)) and not isinstance(dims, bool) else int(data.shape[1])


class _WholeMatrixSource(ImportanceSamplingSource):
    """An importance-sampling source whose matrix is computed whole (once, on first use)."""

    _matrix: Optional[MatrixSource] = None

    def _compute(self) -> Optional[torch.Tensor]:
        raise NotImplementedError

    def blocks(self, rows: int) -> Iterator[Block]:
        if self._matrix is None:
            log_w = self._compute()
            if log_w is None:  # a torchrun helper process: its rows went to rank 0
                return iter(())
            self._matrix = MatrixSource(log_w)
        return self._matrix.blocks(rows)


class CachedSource(_WholeMatrixSource):
    """The same rows through the resumable cache in ``cache_dir`` (shards of ``shard_size`` rows).

    Re-running after an interruption continues where it stopped and gives bitwise the same
    matrix; a cache made for another model, data, k, seed or dtype is refused.
    """

    def __init__(self, *args: Any, cache_dir: Any, shard_size: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cache_dir, self.shard_size = cache_dir, shard_size
        self.is_main = distributed.rank() == 0  # under torchrun every rank fills its shards, rank 0 gathers

    def _compute(self) -> Optional[torch.Tensor]:
        from ..sampling.cache import cached_log_weights

        log_w = cached_log_weights(self.model, self.data, self.k, cache_dir=self.cache_dir, seed=self.seed,
                                   shard_size=self.shard_size, sampler=self.sampler, **self.engine_options)
        if self.sampler is not None and distributed.launched_by_torchrun():
            # Each rank saw the acceptance rates of the shards it computed only: report none.
            self.sampler.acceptance_rates = []
        return log_w


class TorchrunSource(_WholeMatrixSource):
    """The same rows computed by torchrun's processes, each a contiguous range, gathered on rank 0.

    Every process must consume the source (the gather is collective); only rank 0 yields rows
    (``is_main``), the others yield none.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.is_main = distributed.rank() == 0

    def _compute(self) -> Optional[torch.Tensor]:
        log_w = distributed.log_weights(self.model, self.data, self.k, seed=self.seed, sampler=self.sampler,
                                        **self.engine_options)
        if self.sampler is not None:  # its per-datapoint acceptance rates: rank 0 reports them all
            rates = self.sampler.acceptance_rates
            local = torch.cat(rates) if rates else torch.empty(0, dtype=torch.float64)
            gathered = distributed.gather_rows(local.to(torch.float64), self.n, distributed.init())
            self.sampler.acceptance_rates = [] if gathered is None else [gathered]
        return log_w
