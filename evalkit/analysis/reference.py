"""What a sweep measures bias against: the exact log p(x), the user's values, or the pool's best.

:class:`Reference` says which, with the per-datapoint values and a label that every table and
plot prints; :func:`resolve_reference` picks it in that order of preference.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from ..errors import InputError
from ..sources import LogWeightSource, load_array
from . import diagnostics as dg
from .tables import DEFAULT_QUANTITY


@dataclass(frozen=True)
class Reference:
    """What the bias is measured against.

    Attributes
    ----------
    kind : {"exact", "ais", "user", "pool"}
        The model's exact ``log_marginal``; annealed importance sampling on the same data; a
        user-supplied number or per-datapoint values; or, failing all, the best estimate
        available at ``K_max`` on the same samples.
    label : str
        Human-readable description, printed in every table and plot.
    values : ndarray, shape (N,)
        Reference log p(x_n) per datapoint (nats).
    estimator : str or None
        For ``kind == "pool"``, the estimator used at ``K_max``.
    k : int or None
        For ``kind == "pool"``, ``K_max``.
    """

    kind: str
    label: str
    values: np.ndarray = field(repr=False)
    estimator: Optional[str] = None
    k: Optional[int] = None

    @property
    def short(self) -> str:
        """Label for a table column: ``exact``, ``user`` or ``pool:jvi2@K=5000``."""
        if self.kind == "pool":
            return f"pool:{self.estimator}@K={self.k}"
        return self.kind

    @property
    def mean(self) -> float:
        """Mean reference value over datapoints."""
        return float(np.mean(self.values))


def bias_order(name: str) -> int:
    """Order r of an estimator's bias O(K^-r): elbo 0, iwae 1, dvi 2, jviM M+1 (others 0; sumo too: its bias on K
    columns is IWAE-K's and its variance far larger, so it never becomes the pool reference)."""
    match = re.fullmatch(r"jvi(\d+)", name)
    if match:
        return int(match.group(1)) + 1
    return {"iwae": 1, "dvi": 2}.get(name, 0)


def user_reference(reference: Any, n: int, *, quantity: str = DEFAULT_QUANTITY) -> Optional[Reference]:
    """A user-supplied reference (number, per-datapoint values or file) as a Reference, or None.

    ``quantity`` names what the values are of in the label (the source's ``quantity_label``).
    """
    if reference is None:
        return None
    if isinstance(reference, Reference):  # e.g. evalkit.analysis.annealing.ais_reference
        if reference.values.shape != (n,):
            raise InputError(f"reference has {reference.values.size} values for {n} datapoints; give one per datapoint")
        return reference
    if isinstance(reference, (str, os.PathLike)):
        values = np.asarray(_as_float64(load_array(reference, what="reference", key="reference")))
        source = f"from {reference}"
    elif isinstance(reference, (int, float, np.floating, np.integer)) and not isinstance(reference, bool):
        values = np.asarray(float(reference))
        source = f"{float(reference):.6g}"
    else:
        values = _as_float64(reference)
        source = "per-datapoint values"
    values = values.reshape(-1)
    if values.size == 1:
        values = np.full(n, float(values[0]))
    if values.shape != (n,):
        raise InputError(
            f"reference has {values.size} values for {n} datapoints; give one number or one value per datapoint"
        )
    if not np.all(np.isfinite(values)):
        raise InputError(f"reference values must be finite numbers ({quantity} in nats)")
    return Reference("user", f"user-supplied {quantity} ({source})", values)


def resolve_reference(user_ref: Optional[Reference], source: LogWeightSource, k_max: int,
                      pool: tuple) -> Reference:
    """Exact log p(x) when the source's model has one; else the user's reference; else the pool's best.

    ``pool`` is ``(estimator name, per-datapoint values)`` of :func:`pool_best`.
    """
    exact = source.exact_log_marginal()
    if exact is not None:
        values = _as_float64(exact)
        if values.shape != (source.n,):
            raise InputError(f"model.log_marginal returned shape {values.shape}, expected ({source.n},)")
        return Reference("exact", f"exact {source.quantity_label} of the model", values)
    if user_ref is not None:
        return user_ref
    best, values = pool
    label = (f"{best} at K = {k_max} on the same samples (no exact {source.quantity_label}; "
             f"bias is relative to this estimate)")
    return Reference("pool", label, values, estimator=best, k=int(k_max))


def pool_best(chosen, k_max, log_w, moments, max_elements) -> tuple:
    """The least biased requested estimator (or IWAE) at K_max on the whole pool, per datapoint."""
    from .. import estimators as registry

    candidates = [est for est in chosen if est.min_k <= k_max]
    if not any(est.name == "iwae" for est in candidates):
        candidates.append(registry.get("iwae"))
    best = max(candidates, key=lambda est: bias_order(est.name))
    if (best.name, k_max) in moments:
        values = moments[best.name, k_max][0]  # one group at K_max: its mean is the estimate
    else:
        values = dg.evaluate_groups(log_w, k_max, best.fn, max_elements=max_elements)[:, 0]
    return best.name, values


def _as_float64(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"reference must be a number, per-datapoint values or a file path, got {type(values).__name__}") from None


def reference_below_estimate(ref: Reference, table: Any, k_max: int) -> Optional[str]:
    """A sentence when ``ref`` lies significantly below IWAE at ``K_max``, else None.

    IWAE_K is a stochastic lower bound (E[IWAE_K] <= log p(x)), so a reference that IWAE exceeds by
    more than 3 paired standard errors (``bias > 3 bias_se`` in the sweep's table, rows ``estimator,
    k, bias, bias_se``) is not log p(x); for AIS, also a stochastic lower bound, it means the chains
    have not converged. Exact references are never questioned.
    """
    if ref.kind not in ("ais", "user"):
        return None
    rows = table[(table["estimator"] == "iwae") & (table["k"] == k_max)]
    if rows.empty:
        return None
    bias, bias_se = float(rows["bias"].iloc[0]), float(rows["bias_se"].iloc[0])
    if not (np.isfinite(bias) and np.isfinite(bias_se)) or bias <= 3 * bias_se:  # one-sided p = 0.13 % for a true reference
        return None
    what = ("the AIS reference has not converged (AIS is a stochastic lower bound too): raise its steps "
            "(--steps, ais={'steps': ...}), and its chains for a smaller SE" if ref.kind == "ais"
            else "the user-supplied reference cannot be log p(x); check it")
    return (f"the reference lies {bias:.3g} +- {bias_se:.2g} nats below IWAE at K = {k_max}, although IWAE is "
            f"a stochastic lower bound on log p(x): {what}; the 'bias' columns measure the reference's error, "
            "not IWAE's")
