"""Log-weights of a Bayes-by-backprop network, whose weights w are the latent variable.

* :class:`PredictiveSource` -- ``[N_test, K]``: ``log p(y_n | x_n, w_k)`` with the SAME K weight
  samples ``w_k ~ q(w)`` in every row, so IWAE/JVI of row n estimate
  ``log p(y_n | x_n) = log E_q[p(y_n | x_n, w)]``. Rows share their samples
  (``shared_columns``): the Monte Carlo SE of a dataset mean is the jackknife over columns.
* :class:`EvidenceSource` -- ``[1, K]``: ``log p(D | w_k) + log P(w_k) - log q(w_k)``; its ELBO
  is minus the variational free energy, IWAE/JVI estimate ``log p(D)``.

Both draw weight sample k from the stream ``(seed, k)`` (:mod:`evalkit.sampling.bnn_weights`).
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch

from ..sampling.bnn_weights import evidence_log_weights, predictive_log_likelihoods
from .base import Block, LogWeightSource
from .matrix import MatrixSource

QUANTITIES = ("predictive", "evidence")
"""What a Bayesian network's log-weights estimate (``quantity=``)."""


class _BayesianSource(LogWeightSource):
    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, *, seed: int,
                 options: Optional[Dict[str, Any]] = None, model_label: Optional[str] = None,
                 data_label: str = "data") -> None:
        self.model, self.x, self.y, self.k, self.seed = model, x, y, int(k), seed
        self.options = {name: value for name, value in (options or {}).items() if value is not None}
        self.model_label, self.data_label = model_label, data_label
        self._matrix: Optional[MatrixSource] = None

    def _compute(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def run_settings(self) -> Dict[str, Any]:
        # The network keeps its own dtype; the weight samples are drawn on one thread.
        return {"device": self.options.get("device"), "dtype": next(self.model.parameters()).dtype, "threads": 1}

    def blocks(self, rows: int) -> Iterator[Block]:
        if self._matrix is None:  # small (N_test x K, or 1 x K): computed once, then viewed
            self._matrix = MatrixSource(self._compute())
        return self._matrix.blocks(rows)


class PredictiveSource(_BayesianSource):
    """``log p(y_n | x_n, w_k)`` for K weight samples shared by the N test points.

    ``options``: ``batch_size``, ``sample_chunk``, ``device``, ``progress`` of
    :func:`~evalkit.sampling.bnn_weights.predictive_log_likelihoods`.
    """

    quantity_label = "log p(y | x)"
    shared_columns = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n = int(self.x.shape[0])
        self.index = np.arange(self.n)

    def _compute(self) -> torch.Tensor:
        return predictive_log_likelihoods(self.model, self.x, self.y, k=self.k, seed=self.seed, **self.options)


class EvidenceSource(_BayesianSource):
    """One row: the log-weights of the evidence ``log p(D)`` of all N datapoints together.

    ``options``: ``data_batch``, ``sample_chunk``, ``device``, ``progress`` of
    :func:`~evalkit.sampling.bnn_weights.evidence_log_weights` (memory does not grow with N).
    """

    quantity_label = "log p(D)"
    n = 1
    index = np.zeros(1, dtype=np.int64)

    @property
    def prior_label(self) -> str:
        """The prior P(w) the evidence is under, in words, and where it came from (``model.prior_note``)."""
        note = getattr(self.model, "prior_note", None)
        return self.model.prior.describe() + (f" ({note})" if note else "")

    def _compute(self) -> torch.Tensor:
        return evidence_log_weights(self.model, self.x, self.y, k=self.k, seed=self.seed, **self.options)
