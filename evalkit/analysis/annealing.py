"""Annealed importance sampling for users: AIS log-weights, an AIS reference for sweeps, and BDMC.

* :func:`ais` -- the ``[N, chains]`` AIS log-weights of a model on data (the same source that
  ``estimate(method="ais")`` consumes);
* :func:`ais_reference` -- per-datapoint AIS estimates of log p(x) (IWAE over the chains) as the
  :class:`~evalkit.analysis.reference.Reference` a sweep measures bias against;
* :func:`bdmc` -- bidirectional Monte Carlo bounds on simulated data, with IWAE-K and JVI on the
  same data beside them: how far IWAE is from log p(x) for this model.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Union

import pandas as pd
import torch

from .. import estimators as estimator_registry
from ..errors import InputError, WeightWarning, user_stacklevel
from ..sampling.bdmc import BDMCResult
from ..sampling.bdmc import bdmc as bdmc_bounds
from ..sources import open_source, resolve_model
from .estimate import estimate_source
from .groups import _name_indices
from .weights import WeightDiagnostics, summarize_weights
from .reference import Reference

DEFAULT_CHAINS = 16
DEFAULT_STEPS = 1000


def ais(model: Any, data: Any, *, chains: int = DEFAULT_CHAINS, steps: int = DEFAULT_STEPS, seed: int = 0,
        split: Optional[str] = None, binarize: str = "none", cache: Any = None, **options: Any) -> torch.Tensor:
    """Return the ``[N, chains]`` float64 log-weights of annealed importance sampling.

    Parameters
    ----------
    model, data, seed, split, binarize, cache
        As :func:`evalkit.estimate` (a checkpoint path or model; ``"digits"``, a file or a tensor).
    chains, steps : int
        Chains per datapoint (columns) and annealing steps T.
    **options
        AIS options (``schedule``, ``init``, ``leapfrog``, ``step_size``, ``target_accept``,
        ``pilot_chains``, ``adapt_from``; :func:`evalkit.sampling.ais.ais_run`) and engine options
        (``batch_size``, ``device``, ``dtype``, ``progress``, ``threads``).

    Notes
    -----
    Every chain's weight has E[w] = p(x): ``evalkit.estimator_registry.iwae(log_w)`` is the usual AIS
    estimate (log-mean-exp over chains), and JVI, ESS and k-hat apply as to any weights.
    Randomness comes from streams keyed by (seed, dataset index), so the result does not depend
    on the batch size. Under torchrun, rank 0 returns the matrix and the others None.
    """
    ais_options, engine_options = _split_options(options)
    source = open_source(model, data=data, k=chains, seed=seed, split=split, binarize=binarize, cache=cache,
                         engine_options=engine_options, method="ais", ais=dict(steps=steps, **ais_options))
    return source.matrix()


def ais_reference(model: Any, data: Any, *, chains: int = DEFAULT_CHAINS, steps: int = DEFAULT_STEPS,
                  seed: int = 0, **options: Any) -> Optional[Reference]:
    """Per-datapoint AIS estimates of log p(x) as a sweep's reference, labelled with the settings.

    The value for datapoint n is IWAE over its chains' weights, a stochastic lower bound that
    reaches log p(x) as ``steps`` grows; the label states the AIS settings and the Monte Carlo
    standard error of the dataset mean (from the spread of the chains' weights). None on the
    torchrun processes other than rank 0.
    """
    log_w = ais(model, data, chains=chains, steps=steps, seed=seed, **options)
    if log_w is None:  # a torchrun process other than rank 0: it helped, rank 0 holds the reference
        return None
    values = estimator_registry.iwae(log_w).numpy()
    mc_se = math.sqrt(float(estimator_registry.iwae_mc_variance(log_w).sum())) / len(values) if chains > 1 else float("nan")
    label = (f"AIS log p(x) ({steps} steps, {chains} chains, seed {seed}; IWAE over the chains, "
             f"Monte Carlo SE of the mean {mc_se:.2g} nats)")
    return Reference("ais", label, values)


@dataclass
class BDMCReport:
    """:func:`bdmc`'s result: the bounds per step count and IWAE/JVI at each K on the same data.

    Attributes
    ----------
    bounds : BDMCResult
        Lower (forward AIS) and upper (reverse AIS) bounds, per step count and per datapoint.
    importance : DataFrame
        ``estimator, k, estimate, se_data, se_mc``: IWAE and JVI from q(z | x) on the simulated data.
    """

    bounds: BDMCResult
    importance: pd.DataFrame

    def to_table(self) -> str:
        """Plain text: the bounds table, then the importance-sampling estimates."""
        columns = [c for c in ("steps", "lower", "lower_se", "upper", "upper_se", "gap", "gap_se", "exact")
                   if c in self.bounds.summary]
        return ("BDMC bounds on log p(x) of data simulated from the model (mean over datapoints, nats):\n"
                + self.bounds.summary[columns].to_string(index=False, float_format=_four_places, na_rep="n/a")
                + "\n\nimportance sampling from q(z|x) on the same data:\n"
                + self.importance.to_string(index=False, float_format=_four_places, na_rep="n/a") + "\n")


def _four_places(value: float) -> str:
    # A Monte Carlo SE is undefined at K = 1 (one sample): pandas passes NaN through na_rep as "n/a",
    # as estimate's and sweep's tables say it.
    return f"{value:.4f}"


def bdmc(model: Any, *, n: int = 100, steps: Union[int, Sequence[int]] = (100, 1000), chains: int = DEFAULT_CHAINS,
         ks: Sequence[int] = (1, 10, 100, 1000), estimators: Sequence[str] = ("iwae", "jvi1"), seed: int = 0,
         **options: Any) -> BDMCReport:
    """Sandwich log p(x) on ``n`` datapoints simulated from the model, and compare IWAE/JVI with it.

    Runs :func:`evalkit.sampling.bdmc.bdmc` (forward AIS: a stochastic lower bound; reverse AIS
    from the exact posterior sample: a stochastic upper bound; for each step count) and evaluates
    ``estimators`` at each k of ``ks`` by importance sampling from q(z | x) on the same data.
    Where IWAE-K falls below the lower bound, it is that far (at least) from log p(x). Datapoints
    whose importance weights have PSIS k-hat above 0.5 or the K's threshold are named in one
    :class:`~evalkit.errors.WeightWarning` over all K (not one per K).
    """
    model_obj = resolve_model(model)
    bounds = bdmc_bounds(model_obj, n=n, steps=steps, chains=chains, seed=seed, **options)
    rows, diagnostics = [], {}
    # Each K's estimate warns about its own k-hats; one warning over all K says it once.
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always", WeightWarning)
        for k in ks:
            usable = [name for name in estimators if estimator_registry.get(name).min_k <= k]
            if not usable:
                continue
            source = open_source(model_obj, data=bounds.x, k=k, seed=seed,
                                 engine_options={"progress": options.get("progress"), "threads": options.get("threads")})
            result = estimate_source(source, usable)
            rows.append(result.summary.drop(columns=["n"]))
            per_example = result.per_example
            diagnostics[k] = summarize_weights(per_example["ess"].to_numpy() / k, per_example["psis_khat"].to_numpy(), k,
                                               index=per_example["index"].to_numpy())
    for record in records:
        if not issubclass(record.category, WeightWarning):
            warnings.warn(record.message, record.category, stacklevel=user_stacklevel())
    combined = _khat_warning(diagnostics, len(bounds.x))
    if combined:
        warnings.warn(combined, WeightWarning, stacklevel=user_stacklevel())
    importance = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return BDMCReport(bounds, importance)


def _khat_warning(diagnostics: Dict[int, WeightDiagnostics], n: int) -> Optional[str]:
    """One sentence over every K whose weights have datapoints with PSIS k-hat above 0.5 or the K's threshold."""
    parts = []
    for k, d in diagnostics.items():
        if not (d.above_good.size or d.above_threshold.size):
            continue
        part = f"K = {k}: > 0.5 at {d.above_good.size} ({_name_indices(d.above_good)})"
        if d.threshold != 0.5:
            part += f", > {d.threshold:.3g} at {d.above_threshold.size}"
            part += f" ({_name_indices(d.above_threshold)})" if d.above_threshold.size else ""
        parts.append(part)
    if not parts:
        return None
    return (f"PSIS k-hat of the importance weights from q(z | x) on the {n} simulated datapoints, per K (datapoints "
            "above 0.5, and above the reliability threshold min(1 - 1/log10(K), 0.7)): " + "; ".join(parts)
            + ". Above the threshold those datapoints' IWAE/JVI are unreliable and more samples will not fix it; "
            "the BDMC bounds do not use these weights.")


def _split_options(options: Dict[str, Any]) -> tuple:
    from ..sources.annealed import AIS_OPTIONS

    ais_options = {name: value for name, value in options.items() if name in AIS_OPTIONS}
    engine_options = {name: value for name, value in options.items() if name not in AIS_OPTIONS}
    unknown = sorted(set(engine_options) - {"batch_size", "device", "dtype", "progress", "threads", "indices"})
    if unknown:
        raise InputError(f"unknown options {unknown} for AIS; see evalkit.sampling.ais.ais_run")
    return ais_options, engine_options


__all__ = ["BDMCReport", "ais", "ais_reference", "bdmc"]
