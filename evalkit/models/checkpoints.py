"""Checkpoints: every supported format to a model, and evalkit's own formats from a model.

Kinds :func:`load_model` recognises from the file content (:func:`detect_checkpoint_kind`):

``"evalkit"``
    One file (``torch.save``) holding ``{"format": "evalkit", "format_version", "model",
    "config", "state_dict"}`` for a built-in model.
``"safetensors"``
    ``NAME.safetensors`` with the same header as JSON in ``NAME.json`` beside it, or a
    directory with ``model.json`` and ``model.safetensors``. A ``.safetensors`` file without a
    JSON header holds plain weights and is treated like a state_dict (below).
``"bbb"``, ``"blitz"``, ``"bayesian_torch"``
    A state_dict in the layout of the widely copied PyTorch Bayes-by-backprop code (every key
    ``<layer>.{weight_mu, weight_rho, bias_mu, bias_rho}``), of blitz-bayesian-pytorch's
    ``BayesianLinear`` or of bayesian-torch's ``LinearReparameterization``
    (:mod:`evalkit.models.bnn_layouts`); loads as a :class:`~evalkit.models.BayesianMLP` with
    sizes and depth from the shapes, the prior of the layout's library (the scale mixture
    0.5 N(0, 1) + 0.5 N(0, e^-12); N(0, 0.1^2); bayesian-torch's buffers or N(0, 1)) and the
    activation, likelihood and any other prior from ``bnn_options`` (default ReLU, categorical).
``"torchscript"``
    A ``torch.jit.save`` archive whose module has ``log_weights(x, noise)`` (exported with
    ``@torch.jit.export``) and the attributes ``noise_shape``, ``data_dim``,
    ``requires_binary_data``; missing attributes can be passed to :func:`load_model`.
``"iwae_reference"``
    A state_dict in the layout of the PyTorch IWAE reference implementation (``IWAE_1``,
    ``IWAE_2``; see :mod:`evalkit.models.iwae`), possibly wrapped (``{"model_state_dict": ...}``,
    ``{"state_dict": ...}``) and prefixed (``module.``); sizes and depth come from the weights.
``"state_dict"``
    Any other state_dict, plain or wrapped (PyTorch Lightning ``.ckpt``: ``{"state_dict":
    {"model.encoder...": ...}, ...}``): needs ``factory="package.module:function"`` to build
    the architecture. A key prefix is stripped when given (``prefix="model."``) or detected
    (with a :class:`PrefixStrippedWarning` naming it).
``"pickled_module"``
    ``torch.save(model)`` of a whole module; only with ``allow_pickle=True``.

Files are read with ``torch.load(weights_only=True, map_location="cpu")``: tensors saved on
CUDA load on a CPU-only machine, and no code in the file runs. Pickled Python objects need
``allow_pickle=True``, and only for files you trust.

Reading and recognising the files, and matching state_dict keys, live in
:mod:`evalkit.models.checkpoint_formats`; this module saves models and builds them from what was read.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..atomic import atomic_path, atomic_write_text
from ..errors import CheckpointError, InputError, OutputError
from . import BUILTIN_MODELS, check_model
from .base import LatentVariableModel
from .checkpoint_formats import (BNN_KINDS, DIRECTORY_HEADER, DIRECTORY_WEIGHTS, FORMAT_NAME, FORMAT_VERSION, KINDS,  # noqa: F401
                                 PathLike, PrefixStrippedWarning, _load_weights, _read_checkpoint, _reference_prefix,
                                 _strip_prefix, detect_checkpoint_kind)
from .bnn import BayesianMLP, bbb_state_dict_for_model, config_from_bbb_state_dict
from .bnn_layouts import library_prior, to_common_layout
from .iwae import IWAE, config_from_reference_state_dict


# ----------------------------------------------------------------------------------------------
# Saving


def save_model(model: nn.Module, path: PathLike, *, format: Optional[str] = None, overwrite: bool = False) -> Path:
    """Save a built-in model with its architecture config.

    Parameters
    ----------
    model : MLPVAE, IWAE or LinearGaussianModel
    path : str or path
        ``NAME.safetensors`` writes weights there and the header to ``NAME.json``; an existing
        directory, or a path ending in a separator, gets ``model.safetensors`` and
        ``model.json``; any other name (``model.pt``) gets evalkit's single file.
    format : {"evalkit", "safetensors", "directory"}, optional
        Overrides the choice made from ``path``.
    overwrite : bool, default False
        Replace existing files.

    Returns
    -------
    pathlib.Path
        What to pass to :func:`load_model`.

    Notes
    -----
    Your own architectures are saved with ``torch.save(model.state_dict(), path)`` and loaded
    with ``load_model(path, factory="package.module:function")``; TorchScript models with
    ``torch.jit.save``. Files are written atomically (whole or not at all).
    """
    name = type(model).__name__
    if BUILTIN_MODELS.get(name) is not type(model):
        raise InputError(
            f"save_model stores evalkit's built-in models ({sorted(BUILTIN_MODELS)}), got {name}; save your own "
            "architecture with torch.save(model.state_dict(), path) and load it with "
            "load_model(path, factory='package.module:function')."
        )
    if format is None:
        format = _format_from_path(path)
    if format not in ("evalkit", "safetensors", "directory"):
        raise InputError(f"Expected argument `format` to be 'evalkit', 'safetensors' or 'directory', got {format!r}.")
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model": name, "config": model.get_config()}
    state_dict = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    path = Path(path)
    if format == "evalkit":
        with atomic_path(path, overwrite=overwrite) as tmp:
            torch.save({**header, "state_dict": state_dict}, tmp)
        return path
    from safetensors.torch import save_file

    if format == "directory":
        if path.exists() and not path.is_dir():
            raise OutputError(f"output path {str(path)!r} is a file; give a directory for format='directory'.")
        path.mkdir(exist_ok=True)
        weights, header_path = path / DIRECTORY_WEIGHTS, path / DIRECTORY_HEADER
    else:
        weights, header_path = path, path.with_suffix(".json")
    with atomic_path(weights, overwrite=overwrite) as tmp:
        save_file(state_dict, str(tmp), metadata={"format": FORMAT_NAME})
    atomic_write_text(header_path, json.dumps({**header, "weights": weights.name}, indent=2) + "\n", overwrite=overwrite)
    return path


def _format_from_path(path: PathLike) -> str:
    """The format :func:`save_model` writes to ``path`` when none is given."""
    if Path(path).suffix == ".safetensors":
        return "safetensors"
    if Path(path).is_dir() or str(path).endswith(("/", os.sep)):
        return "directory"
    return "evalkit"


# ----------------------------------------------------------------------------------------------
# Loading each kind


def _builtin_model(header: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], path: Path) -> nn.Module:
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has evalkit format version {version!r}; this evalkit reads version {FORMAT_VERSION} or older, "
            "so upgrade evalkit."
        )
    name = header.get("model")
    cls = BUILTIN_MODELS.get(name)
    if cls is None:
        raise CheckpointError(
            f"{path} names model class {name!r}, which this evalkit does not have ({sorted(BUILTIN_MODELS)}); "
            "upgrade evalkit or load the weights with factory=."
        )
    try:
        model = cls.from_config(dict(header.get("config", {})))
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path} has a config that {name} cannot be built from ({err}); the header is damaged.") from None
    return _load_weights(model, state_dict, prefix="", path=path)


def _put_working_directory_on_path() -> None:
    """Let ``factory="module:function"`` import a module file from the current directory.

    ``python -m evalkit`` (and ``python script.py`` for the script's directory) puts the current
    directory first on ``sys.path``; the ``evalkit`` console script does not, so a glue module next
    to the user's checkpoint was found by one and not the other. This makes both behave like
    ``python -m``: the current directory goes to the front of ``sys.path`` unless it is already
    there (as itself or as ``''``) and stays there, so that the factory's own later imports of
    neighbouring modules work too.
    """
    cwd = os.getcwd()
    if not any(entry in ("", cwd) or os.path.abspath(entry) == cwd for entry in sys.path):
        sys.path.insert(0, cwd)


def resolve_factory(factory: Union[str, Callable[[], nn.Module]]) -> Callable[[], nn.Module]:
    """Return the callable named by ``"package.module:function"`` (or ``factory`` if callable).

    The module is imported as ``python -m`` would import it: from ``sys.path`` with the current
    directory first, so ``--model my_glue:build_vae`` finds ``./my_glue.py``.
    """
    if callable(factory):
        return factory
    if not isinstance(factory, str) or factory.count(":") != 1:
        raise InputError(f"Expected argument `factory` as 'package.module:function', got {factory!r}.")
    module_name, attribute = factory.split(":")
    _put_working_directory_on_path()
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise InputError(
            f"cannot import module '{module_name}' from factory={factory!r} ({err}); run from the directory that "
            "holds it, install the package or add its directory to PYTHONPATH."
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise InputError(f"module '{module_name}' has no attribute '{attribute}' (factory={factory!r}); check the name.")
        target = getattr(target, part)
    if not callable(target):
        raise InputError(f"factory={factory!r} names a {type(target).__name__}, not a function or class.")
    return target


def _factory_model(factory: Union[str, Callable[[], nn.Module]], state_dict: Mapping[str, torch.Tensor], prefix: Optional[str],
                   path: Path, kind: str = "state_dict") -> nn.Module:
    """The factory's model with the checkpoint's weights.

    A :class:`BayesianMLP` (weights as the latent variable, no ``log_weights``) is accepted as it is;
    given a file in a Bayes-by-backprop layout its keys are renamed to the network's
    (``layers.0.weight_mu``), and it keeps the prior and activation the factory gave it.
    """
    build = resolve_factory(factory)
    try:
        model = build()
    except TypeError as err:
        raise InputError(f"factory {factory!r} must build the model with no arguments ({err}); wrap it in a function that does.") from None
    if isinstance(model, BayesianMLP):
        if kind in BNN_KINDS:
            state_dict, prefix = bbb_state_dict_for_model(to_common_layout(state_dict, kind)), ""
        model.prior_note = f"given by the factory {factory!r}" if isinstance(factory, str) else "given by the factory"
    else:
        check_model(model)
    model = _load_weights(model, state_dict, prefix=prefix, path=path)
    # The factory's module is model code too: a cache fingerprint hashes its source.
    with contextlib.suppress(AttributeError, TypeError, RuntimeError):
        object.__setattr__(model, FACTORY_MODULE_ATTRIBUTE, getattr(build, "__module__", None))
    return model


FACTORY_MODULE_ATTRIBUTE = "_evalkit_factory_module"
"""Attribute naming the module of the ``factory=`` that built a model (for the cache fingerprint)."""


def _reference_model(state_dict: Mapping[str, torch.Tensor], prefix: Optional[str], path: Path) -> IWAE:
    if prefix is None:
        prefix = _reference_prefix(state_dict) or ""
        if prefix:
            warnings.warn(
                f"stripped the prefix '{prefix}' from the IWAE reference state_dict keys of {path}; pass prefix='{prefix}' "
                "to say so explicitly.",
                PrefixStrippedWarning,
                stacklevel=3,
            )
    state_dict = _strip_prefix(state_dict, prefix)
    return _load_weights(IWAE(**config_from_reference_state_dict(state_dict)), state_dict, prefix="", path=path)


def _bbb_model(state_dict: Mapping[str, torch.Tensor], options: Optional[Mapping[str, Any]], path: Path,
               layout: str = "bbb") -> BayesianMLP:
    """A :class:`BayesianMLP` from a state_dict in one of the Bayes-by-backprop layouts, with that layout's prior
    (:func:`~evalkit.models.bnn_layouts.library_prior`) unless ``options`` give one; ``model.prior_note`` says which."""
    options = dict(options or {})
    unknown = sorted(set(options) - {"activation", "likelihood", "noise_scale", "prior"})
    if unknown:
        raise InputError(f"unknown bnn_options {unknown}; the options are activation, likelihood, noise_scale and prior.")
    common = to_common_layout(state_dict, layout)
    if options.get("prior") is None:
        options["prior"], note = library_prior(state_dict, layout)
    else:
        note = "given by prior= (CLI: --prior)"
    model = BayesianMLP.from_config(config_from_bbb_state_dict(common, **options))
    model = _load_weights(model, bbb_state_dict_for_model(common), prefix="", path=path)
    model.prior_note = note
    return model


class TorchScriptModel(LatentVariableModel):
    """Adapter giving a TorchScript module the model protocol.

    Parameters
    ----------
    module : torch.jit.ScriptModule
        Has ``log_weights(x, noise)`` (scripted with ``@torch.jit.export``, or traced with
        ``torch.jit.trace_module(model, {"log_weights": (x, noise)})``).
    noise_shape, data_dim, requires_binary_data : optional
        Used when given, else read from the module's attributes of the same names.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        noise_shape: Optional[Sequence[int]] = None,
        data_dim: Optional[int] = None,
        requires_binary_data: Optional[bool] = None,
    ) -> None:
        super().__init__()
        if not hasattr(module, "log_weights"):
            raise CheckpointError(
                "the TorchScript archive has no log_weights method; decorate it with @torch.jit.export before "
                "torch.jit.script, or trace it with torch.jit.trace_module(model, {'log_weights': (x, noise)})."
            )

        def attribute(name: str, given: Any) -> Any:
            if given is not None:
                return given
            if hasattr(module, name):
                return getattr(module, name)
            raise CheckpointError(
                f"the TorchScript archive has no attribute '{name}'; pass {name}=... to load_model (CLI: "
                f"--{name.replace('_', '-')}), or set self.{name} in the module before scripting it."
            )

        self.module = module
        self.noise_shape = tuple(int(size) for size in attribute("noise_shape", noise_shape))
        self.data_dim = int(attribute("data_dim", data_dim))
        self.requires_binary_data = bool(attribute("requires_binary_data", requires_binary_data))

    def log_weights(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.module.log_weights(x, noise)


def _torchscript_model(path: Path, **attributes: Any) -> TorchScriptModel:
    """Load the TorchScript archive at ``path`` on the CPU and adapt it to the model protocol."""
    try:
        with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; such archives still load
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as err:
        raise CheckpointError(f"cannot load TorchScript archive {path} ({str(err).splitlines()[0]}).") from None
    return TorchScriptModel(module, **attributes).eval()


def load_model(
    path: PathLike,
    *,
    factory: Optional[Union[str, Callable[[], nn.Module]]] = None,
    prefix: Optional[str] = None,
    allow_pickle: bool = False,
    noise_shape: Optional[Sequence[int]] = None,
    data_dim: Optional[int] = None,
    requires_binary_data: Optional[bool] = None,
    bnn_options: Optional[Mapping[str, Any]] = None,
) -> nn.Module:
    """Load a model from a checkpoint of any supported kind (recognised from the content).

    Parameters
    ----------
    path : str or path
        A file or a directory written by :func:`save_model`, a state_dict or Lightning
        checkpoint, a TorchScript archive, or an IWAE reference checkpoint (module notes).
    factory : str or callable, optional
        ``"package.module:function"`` (or a callable) that builds your architecture with no
        arguments; the checkpoint then supplies only the weights.
    prefix : str, optional
        Key prefix to strip from the state_dict (``"model."`` for Lightning). Default:
        detected, with a :class:`PrefixStrippedWarning` saying which.
    allow_pickle : bool, default False
        Allow pickled Python objects (can run code from the file). Only for trusted files.
    noise_shape, data_dim, requires_binary_data : optional
        Protocol attributes of a TorchScript archive that does not carry them.
    bnn_options : dict, optional
        For a Bayes-by-backprop state_dict (kinds ``"bbb"``, ``"blitz"``, ``"bayesian_torch"``):
        ``activation`` ("relu", "tanh"),
        ``likelihood`` ("categorical", "gaussian"), ``noise_scale`` (Gaussian) and ``prior``
        (a prior, ``{"kind": "gaussian", "sigma": ...}`` / ``{"kind": "scale_mixture", ...}`` or
        ``"gaussian:SIGMA"``); the prior defaults to the layout's library's
        (:mod:`evalkit.models.bnn_layouts`).

    Returns
    -------
    torch.nn.Module
        Following the model protocol, on the CPU, in eval mode, in the checkpoint's dtype.

    Raises
    ------
    CheckpointError
        Missing, unreadable or unrecognised files; keys or shapes that do not match (the
        message lists them and suggests a prefix); pickles without ``allow_pickle``.
    """
    checkpoint = _read_checkpoint(path, allow_pickle=allow_pickle)
    if checkpoint.kind != "torchscript" and (noise_shape, data_dim, requires_binary_data) != (None, None, None):
        raise InputError(
            f"noise_shape, data_dim and requires_binary_data describe TorchScript archives, but {checkpoint.path} is a "
            f"{checkpoint.kind!r} checkpoint; leave them out."
        )
    if bnn_options is not None and checkpoint.kind not in BNN_KINDS:
        raise InputError(f"bnn_options describe Bayes-by-backprop state_dicts, but {checkpoint.path} is a "
                         f"{checkpoint.kind!r} checkpoint; leave them out.")
    if factory is not None:
        if checkpoint.kind in ("torchscript", "pickled_module"):
            raise InputError(f"{checkpoint.path} is a {checkpoint.kind} checkpoint that builds its own model; leave out factory=.")
        return _factory_model(factory, checkpoint.state_dict, prefix, checkpoint.path, checkpoint.kind)
    if checkpoint.kind in ("evalkit", "safetensors"):
        return _builtin_model(checkpoint.header, checkpoint.state_dict, checkpoint.path)
    if checkpoint.kind == "iwae_reference":
        return _reference_model(checkpoint.state_dict, prefix, checkpoint.path)
    if checkpoint.kind in BNN_KINDS:
        return _bbb_model(checkpoint.state_dict, bnn_options, checkpoint.path, checkpoint.kind)
    if checkpoint.kind == "torchscript":
        return _torchscript_model(checkpoint.path, noise_shape=noise_shape, data_dim=data_dim,
                                  requires_binary_data=requires_binary_data)
    if checkpoint.kind == "pickled_module":
        check_model(checkpoint.module)
        return checkpoint.module.cpu().eval()
    sample = sorted(checkpoint.state_dict)[:4]
    raise CheckpointError(
        f"{checkpoint.path} holds a state_dict (keys like {sample}) in no layout evalkit recognises; pass "
        "factory='package.module:function' that builds the architecture (CLI: --model package.module:function), or, "
        "for a Bayes-by-backprop network in another library's layout, rename its keys to "
        "<layer>.weight_mu/.weight_rho/.bias_mu/.bias_rho as docs/bnn.md ('Checkpoints') shows."
    )


__all__ = ["load_model", "save_model", "detect_checkpoint_kind", "resolve_factory", "PrefixStrippedWarning",
           "TorchScriptModel", "KINDS"]
