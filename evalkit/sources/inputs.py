"""Turn what a user hands the API (a model or a checkpoint path; a tensor, an array, a file or a
dataset name; a log-weight matrix) into a model, a validated ``[N, D]`` data tensor and, from
them, the :class:`~evalkit.sources.LogWeightSource` that :func:`evalkit.estimate` and
:func:`evalkit.sweep` consume (:func:`open_source`).

These are the only places where the public API accepts "either a thing or where to find it",
so that :func:`evalkit.analysis.estimate`, :func:`evalkit.analysis.sweep` and the CLI agree on the rules.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from ..errors import DataError, InputError
from ..sampling import distributed
from .base import LogWeightSource
from ..models.joint import check_ais_model
from .annealed import AIS_OPTIONS, AISSampler
from .bayesian import QUANTITIES, EvidenceSource, PredictiveSource
from .importance import CachedSource, ImportanceSamplingSource, TorchrunSource
from .matrix import MatrixSource, check_log_weights
from .provenance import input_digests

ModelLike = Union[torch.nn.Module, str, os.PathLike]
DataLike = Union[torch.Tensor, np.ndarray, str, os.PathLike]


def resolve_model(
    model: ModelLike,
    *,
    factory: Optional[str] = None,
    prefix: Optional[str] = None,
    allow_pickle: bool = False,
    prior: Any = None,
    activation: Optional[str] = None,
) -> torch.nn.Module:
    """Return ``model`` itself, or load it from a checkpoint path with :func:`evalkit.load_model`.

    ``prior`` and ``activation`` replace a Bayesian network's (:func:`~evalkit.models.bnn.with_bnn_settings`;
    refused for other models).
    """
    from ..models.bnn import with_bnn_settings

    if not (isinstance(model, torch.nn.Module) or hasattr(model, "log_weights")):
        from ..models.checkpoints import load_model

        model = load_model(model, factory=factory, prefix=prefix, allow_pickle=allow_pickle)
    return with_bnn_settings(model, prior=prior, activation=activation)


def resolve_data(
    data: DataLike,
    *,
    model: Optional[torch.nn.Module] = None,
    split: str = "test",
    binarize: str = "none",
    seed: int = 0,
    rescale_levels: bool = False,
) -> torch.Tensor:
    """Return the data as a ``[N, D]`` float tensor, checked against ``model`` when given.

    Parameters
    ----------
    data : Tensor, ndarray, str or path
        In-memory data (one datapoint per row; images are flattened), a built-in dataset name
        (``"digits"``) or a ``.npy``/``.npz``/``.pt``/``.csv`` file.
    model : Module, optional
        When given, the data dimension and (for Bernoulli decoders) binariness are checked.
    split, binarize, seed
        As in :func:`evalkit.data.load_data`; ``binarize`` also applies to in-memory data.
    rescale_levels : bool, default False
        Map the built-in digits' 17 grey levels to the model's ``data_levels`` with
        :func:`evalkit.data.rescale_levels` (``v -> floor(v (L - 1) / 16 + 1/2)``). Without it,
        the digits are refused for a model of another level count.

    Notes
    -----
    A model with a discrete decoder (an int ``data_levels``) takes integer images: ``"digits"``
    is then its 17 grey levels 0..16 and a ``.npy``/``.npz``/``.pt`` file or an in-memory
    ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]`` array is read by
    :func:`evalkit.data.load_images` (layout detected, unscaled) and flattened channel-major
    to ``[N, C*H*W]``. Other models get :func:`evalkit.data.load_data`'s floats.

    The levels must be the model's: the digits (17 levels) are refused for a model of another
    level count unless ``rescale_levels``, and image data whose largest value is below half the
    model's top level ``data_levels - 1`` get a :class:`~evalkit.errors.DataWarning` naming both
    (17-level data scored as 8-bit images would look like nearly black pictures).
    """
    from .. import data as data_module

    takes_images = _takes_images(model, data, binarize)
    if rescale_levels and not takes_images:
        raise InputError("rescale_levels (CLI: --rescale-levels) maps the digits' 17 grey levels to a discrete "
                         "decoder's data_levels; this model has no data_levels, or the data are binarised, so drop it.")
    if takes_images:
        tensor = _at_model_levels(_image_rows(data, split), data, int(model.data_levels), rescale=rescale_levels)
    elif isinstance(data, (str, os.PathLike)):
        tensor = data_module.load_data(data, split=split, binarize=binarize, seed=seed)
    else:
        tensor = data_module.as_data_tensor(data)
        if not isinstance(tensor, torch.Tensor):
            raise DataError(
                f"data must be a tensor, a numpy array, a file path or a dataset name, got {type(data).__name__}"
            )
        if tensor.ndim == 1:
            raise DataError(
                f"data has shape {tuple(tensor.shape)}; pass one datapoint per row, e.g. data.reshape(1, -1) for one datapoint"
            )
        if tensor.ndim == 0 or tensor.shape[0] == 0:
            raise DataError(f"data has shape {tuple(tensor.shape)}: no datapoints; pass at least one row")
        tensor = tensor.reshape(tensor.shape[0], -1)
        if binarize != "none":
            tensor = data_module.binarize(tensor, binarize, seed=seed)
    if model is not None:
        data_module.check_data_for_model(tensor, model)
    return tensor


_IMAGE_SUFFIXES = (".npy", ".npz", ".pt", ".pth")


def _takes_images(model: Any, data: Any, binarize: str) -> bool:
    """Whether ``data`` is read as integer images: a discrete decoder's data, unbinarised, not a CSV or a table."""
    levels = getattr(model, "data_levels", None)
    if model is None or binarize != "none" or isinstance(levels, bool) or not isinstance(levels, (int, np.integer)):
        return False
    if isinstance(data, (str, os.PathLike)):
        return str(data) == "digits" or os.path.splitext(os.fspath(data))[1].lower() in _IMAGE_SUFFIXES
    return isinstance(data, (np.ndarray, torch.Tensor)) and data.ndim >= 3


def _image_rows(data: Any, split: str) -> torch.Tensor:
    """Integer images ``[N, C, H, W]`` flattened to ``[N, C*H*W]`` rows (float, values unscaled)."""
    from ..data import load_images

    dtype = torch.float32  # exact for integers up to 2^24; float64 data stay float64
    if isinstance(data, torch.Tensor) and data.dtype == torch.float64 or \
            isinstance(data, np.ndarray) and data.dtype == np.float64:
        dtype = torch.float64
    images = load_images(data.detach().cpu() if isinstance(data, torch.Tensor) else data, split=split)
    return images.reshape(images.shape[0], -1).to(dtype)


def _at_model_levels(rows: torch.Tensor, data: Any, levels: int, *, rescale: bool) -> torch.Tensor:
    """Image rows at the model's ``levels``: the digits rescaled (or refused), other data warned about when dark."""
    import warnings

    from ..data import DIGITS_LEVELS, rescale_levels
    from ..errors import DataWarning, user_stacklevel

    is_digits = isinstance(data, str) and data == "digits"
    if is_digits and levels != DIGITS_LEVELS:
        if not rescale:
            raise DataError(
                f"the built-in digits have {DIGITS_LEVELS} grey levels (0..{DIGITS_LEVELS - 1}) but the model's decoder "
                f"takes data_levels={levels} (0..{levels - 1}), so it would read their white ({DIGITS_LEVELS - 1}) as "
                f"{DIGITS_LEVELS - 1} of {levels - 1}; pass "
                f"--rescale-levels (rescale_levels=True) to map each level v to floor(v * {levels - 1} / "
                f"{DIGITS_LEVELS - 1} + 1/2), or give --data a file with {levels} levels."
            )
        return rescale_levels(rows, DIGITS_LEVELS, levels)
    if rescale and not is_digits:
        raise InputError("rescale_levels (CLI: --rescale-levels) applies to the built-in digits, whose 17 levels are "
                         "known; a file or an array does not record its level count, so rescale it to "
                         f"0..{levels - 1} yourself (evalkit.data.rescale_levels) and drop the option.")
    top = float(rows.max())
    if not is_digits and top < (levels - 1) / 2:
        warnings.warn(
            f"the data's largest value is {top:g} but the model's decoder takes levels 0..{levels - 1} "
            f"(data_levels={levels}); if the data have fewer levels (the digits' 17, say), rescale them to "
            f"0..{levels - 1} first (evalkit.data.rescale_levels), or the model scores them as nearly black images.",
            DataWarning, stacklevel=user_stacklevel())
    return rows


def describe_model(model: Any, model_obj: Any) -> str:
    """How tables name a model: the checkpoint path it came from, else its class name."""
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        return str(model)
    return type(model_obj).__name__


def describe_data(data: Any, split: str, binarize: str, *, levels: Optional[int] = None) -> str:
    """How tables name the data: ``digits (test split)``, a file path or ``in-memory Tensor (N, D)``.

    ``levels``: the level count the digits were rescaled to (``rescale_levels``), named in the label.
    """
    if isinstance(data, str) and data == "digits":
        text = f"digits ({split} split" + (f", 17 levels rescaled to {levels}" if levels else "") + ")"
    elif isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        text = str(data)
    else:
        text = f"in-memory {type(data).__name__} {tuple(getattr(data, 'shape', ()))}"
    return text + (f", binarize={binarize}" if binarize != "none" else "")


def open_source(
    model_or_log_weights: Any,
    *,
    data: Any = None,
    k: int,
    seed: int = 0,
    factory: Optional[str] = None,
    prefix: Optional[str] = None,
    allow_pickle: bool = False,
    split: Optional[str] = None,
    binarize: str = "none",
    indices: Any = None,
    cache: Any = None,
    cache_shard_size: Optional[int] = None,
    engine_options: Optional[Dict[str, Any]] = None,
    matrix_label: str = "log-weight matrix",
    quantity: Optional[str] = None,
    target: Optional[str] = None,
    method: str = "is",
    ais: Optional[Dict[str, Any]] = None,
    rescale_levels: bool = False,
    prior: Any = None,
    activation: Optional[str] = None,
) -> LogWeightSource:
    """The log-weight source for what the user handed the API: the one place that decides it.

    Parameters
    ----------
    model_or_log_weights : Module, path, Tensor, ndarray or LogWeightSource
        A model or checkpoint (importance sampling from its proposal), a precomputed ``[N, K]``
        matrix (its K columns; ``k`` is ignored), or a source, returned as it is.
    data, split, binarize, seed, rescale_levels
        The model's data (:func:`resolve_data`); ``seed`` keys the per-datapoint streams.
        ``split`` defaults to ``"test"`` (``"train"`` for a Bayesian network's evidence).
    k : int
        Samples per datapoint for a model.
    indices : sequence of int, optional
        Evaluate only these rows of the data; each keeps the stream of its dataset index.
    cache, cache_shard_size : optional
        Compute through the resumable cache (:class:`CachedSource`).
    engine_options : dict, optional
        For :func:`evalkit.log_weights`; its ``indices`` entry, if any, gives the dataset index
        of every row of ``data`` (instead of selecting rows).
    quantity, target : str, optional
        For a Bayes-by-backprop network (:class:`~evalkit.models.BayesianMLP`):
        ``"predictive"`` (default) or ``"evidence"`` (:mod:`evalkit.sources.bayesian`), and the
        target key or CSV column of labelled data (data may also be an ``(x, y)`` pair).
    method : {"is", "ais"}
        Importance sampling from q(z | x) (the engine), or annealed importance sampling with
        ``k`` chains per datapoint and the options ``ais`` (:class:`~evalkit.sources.annealed.AISSampler`).
    prior, activation : optional
        Replace a Bayesian network's weight prior (a prior, its config dict or ``"gaussian:SIGMA"``)
        and activation (``"relu"``, ``"tanh"``): a state_dict records neither.

    Under torchrun a model's rows are split across the processes (:class:`TorchrunSource`).
    Nothing is computed until the source's blocks are asked for.
    """
    engine_options = dict(engine_options or {})
    if isinstance(model_or_log_weights, LogWeightSource):
        return model_or_log_weights
    if isinstance(model_or_log_weights, (torch.Tensor, np.ndarray)):
        extra = [name for name, value in (("data", data), ("indices", indices), ("cache", cache),
                                          ("cache_shard_size", cache_shard_size),
                                          ("rescale_levels", rescale_levels or None), ("prior", prior),
                                          ("activation", activation)) if value is not None]
        extra += [name for name, value in engine_options.items() if value is not None]
        if extra:
            raise InputError(f"{', '.join(extra)} only apply when sweeping a model; drop them for a log-weight matrix")
        return MatrixSource(check_log_weights(model_or_log_weights), data_label=matrix_label)
    if data is None:
        raise InputError("a model needs data to evaluate; pass data= a tensor, a data file or 'digits'")
    model = resolve_model(model_or_log_weights, factory=factory, prefix=prefix, allow_pickle=allow_pickle,
                          prior=prior, activation=activation)
    if getattr(model, "is_bayesian_network", False):
        if distributed.launched_by_torchrun():
            raise InputError("a Bayesian network's predictive or evidence runs in one process (its K weight samples "
                             "are shared by all rows); run it without torchrun")
        extra = {"indices": indices, "cache": cache, "binarize": binarize != "none", "method='ais'": method == "ais",
                 "ais": ais, "rescale_levels": rescale_levels}
        source = _bayesian_source(model, model_or_log_weights, data, k=k, seed=seed, split=split, quantity=quantity,
                                  target=target, extra=extra, engine_options=engine_options)
        source.provenance = input_digests(model_or_log_weights, data)
        return source
    if quantity is not None or target is not None:
        raise InputError("quantity and target apply only to Bayesian networks (weights as the latent variable); "
                         "drop them for this model")
    split = "test" if split is None else split
    x = resolve_data(data, model=model, split=split, binarize=binarize, seed=seed, rescale_levels=rescale_levels)
    row_index = engine_options.pop("indices", None)
    _check_run_options(cache, indices if indices is not None else row_index)
    if indices is not None:
        row_index = _check_indices(indices, x.shape[0])
        x = x[torch.from_numpy(row_index)]
    elif row_index is not None:
        row_index = np.asarray(row_index.cpu() if isinstance(row_index, torch.Tensor) else row_index)
    common = dict(seed=seed, index=row_index, engine_options=engine_options,
                  model_label=describe_model(model_or_log_weights, model),
                  data_label=describe_data(data, split, binarize, levels=model.data_levels if rescale_levels else None),
                  sampler=_sampler(method, ais, model))
    if cache is not None:
        source = CachedSource(model, x, k, cache_dir=cache, shard_size=cache_shard_size, **common)
    elif distributed.launched_by_torchrun():
        source = TorchrunSource(model, x, k, **common)
    else:
        source = ImportanceSamplingSource(model, x, k, **common)
    source.provenance = input_digests(model_or_log_weights, data)
    return source


def _sampler(method: str, ais: Optional[Dict[str, Any]], model: Any) -> Optional[AISSampler]:
    """None for the engine's importance sampling; an :class:`AISSampler` for ``method="ais"``."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "is":
        if ais:
            raise InputError("AIS options (steps, schedule, leapfrog, ...) apply to method='ais'; drop them or set it")
        return None
    options = dict(ais or {})
    unknown = sorted(set(options) - set(AIS_OPTIONS))
    if unknown:
        raise InputError(f"unknown AIS options {unknown}; the options are {', '.join(AIS_OPTIONS)}")
    check_ais_model(model, options.get("init", "proposal"))
    return AISSampler(**options)


METHODS = ("is", "ais")
"""How a model's log-weights are drawn: importance sampling from q(z | x), or annealed importance sampling."""


def _cli_spelling(argument: str) -> str:
    """``cache_shard_size`` -> ``--cache-shard-size``; ``method='ais'`` -> ``--method ais``."""
    name, _, value = argument.partition("=")
    option = "--" + name.replace("_", "-")
    return f"{option} {value.strip(chr(39))}" if value else option


def _bayesian_source(model: Any, model_arg: Any, data: Any, *, k: int, seed: int, split: Optional[str],
                     quantity: Optional[str], target: Optional[str], extra: Dict[str, Any],
                     engine_options: Dict[str, Any]) -> LogWeightSource:
    """A Bayesian network's predictive ``[N, K]`` or evidence ``[1, K]`` source on labelled data."""
    from ..data import check_targets_for_model, load_labelled_data

    quantity = "predictive" if quantity is None else quantity
    if quantity not in QUANTITIES:
        raise InputError(f"quantity must be one of {', '.join(QUANTITIES)}, got {quantity!r}")
    unused = [name for name, value in extra.items() if value not in (None, False)]
    unused += [name for name, value in engine_options.items()
               if name not in _BAYESIAN_OPTIONS and value not in (None, False) and str(value) not in _DEFAULT_DTYPES]
    if unused:
        # Each named as in Python and as the command line spells it (cache_shard_size, --cache-shard-size).
        named = ", ".join(f"{name} ({_cli_spelling(name)})" for name in unused)
        raise InputError(f"{named} do not apply to a Bayesian network's {quantity}; drop them")
    split = ("train" if quantity == "evidence" else "test") if split is None else split
    if isinstance(data, tuple) and len(data) == 2:
        x, y = (torch.as_tensor(np.asarray(part)) if not isinstance(part, torch.Tensor) else part for part in data)
        x = x.reshape(x.shape[0], -1).to(torch.float32) if not x.is_floating_point() else x.reshape(x.shape[0], -1)
        label = f"in-memory (x, y) {tuple(x.shape)}"
    elif isinstance(data, (str, os.PathLike)):
        x, y = load_labelled_data(data, split=split, target=target)
        label = describe_data(data, split, "none")
    else:
        raise DataError("a Bayesian network needs inputs and targets: pass data='digits', a .npz/.pt/.csv file "
                        "with targets, or an (x, y) pair")
    check_targets_for_model(x, y, model)
    options = {name: engine_options.get(name) for name in _BAYESIAN_OPTIONS}
    if quantity == "evidence":
        options["data_batch"] = options.pop("batch_size")
    source_class = EvidenceSource if quantity == "evidence" else PredictiveSource
    return source_class(model, x, y, k, seed=seed, options=options, model_label=describe_model(model_arg, model),
                        data_label=f"{label}, {quantity}")


_BAYESIAN_OPTIONS = ("batch_size", "device", "progress")
_DEFAULT_DTYPES = ("float32", "torch.float32")  # the engine's default, passed by the CLI; the network keeps its own


def _check_run_options(cache: Any, indices: Any) -> None:
    """Refuse the combinations that cannot work: chosen rows with a cache or under torchrun."""
    under_torchrun = distributed.launched_by_torchrun()
    if under_torchrun and indices is not None:
        raise InputError("under torchrun the processes split the rows of the data; pass the rows you want as "
                         "data, not indices=")
    if indices is not None and cache is not None:
        raise InputError("a cache always covers the whole dataset; drop indices= or cache=")


def _check_indices(indices: Any, n: int) -> np.ndarray:
    values = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices)
    if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        raise InputError(f"indices must be a non-empty 1-D sequence of integer row numbers, got {indices!r}")
    if values.min() < 0 or values.max() >= n:
        raise InputError(f"indices must lie in 0..{n - 1} (the data has {n} rows), got {int(values.min())}..{int(values.max())}")
    if np.unique(values).size != values.size:
        raise InputError("indices contain repeats; give each datapoint once")
    return values.astype(np.int64)
