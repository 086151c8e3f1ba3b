"""Fingerprints of a log-weight computation: sha256 digests of the model, the data, and the settings.

A cache (:mod:`evalkit.sampling.cache`) is reused only for the same fingerprint. It covers what
determines the numbers: the model (class, config, and every parameter and buffer: name, dtype,
shape, bytes), the model's code (:func:`code_digest`: the source files of the modules its
classes and their bases come from, the module of the ``factory=`` that built it, TorchScript
code, evalkit's own source and torch's version), the data (dtype, shape, bytes), K, the seed,
the compute dtype, the device type, ``compile`` and (on CUDA) ``tf32``, the evalkit version and
the cache format; nothing else.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

#: Version of the cache layout and fingerprint recipe; a cache of another version is refused.
CACHE_FORMAT_VERSION = 2


def fingerprint_components(
    model: torch.nn.Module,
    data: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: Any = None,
    compile: bool = False,
    tf32: bool = False,
) -> Dict[str, Any]:
    """The parts of a cache fingerprint: what determines the log-weights, nothing else.

    Returns
    -------
    dict
        ``format``, ``evalkit``, ``k``, ``seed``, ``dtype``, ``device``, ``compile``, ``tf32``
        as plain values; ``model``, ``code`` and ``data`` as sha256 hex digests. ``tf32`` only counts on
        CUDA (it changes nothing on the CPU).
    """
    from .._version import __version__

    device_type = _device_type(device)
    return {
        "format": CACHE_FORMAT_VERSION,
        "evalkit": __version__,
        "model": model_digest(model),
        "code": code_digest(model),
        "data": tensor_digest(data),
        "k": int(k),
        "seed": int(seed),
        "dtype": str(dtype).replace("torch.", ""),
        "device": device_type,
        "compile": bool(compile),
        "tf32": bool(tf32) and device_type == "cuda",
    }


def model_digest(model: Any) -> str:
    """sha256 of a model's class, config and every parameter and buffer (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    cls = type(model)
    h.update(f"class {cls.__module__}.{cls.__qualname__}\n".encode())
    original = getattr(model, "original_name", None)  # TorchScript keeps the scripted class name here
    if isinstance(original, str):
        h.update(f"original_name {original}\n".encode())
    config = _model_config(model)
    if config is not None:
        h.update(b"config ")
        h.update(json.dumps(config, sort_keys=True, default=repr).encode())
        h.update(b"\n")
    for name, tensor in _named_tensors(model):
        h.update(f"tensor {name}\n".encode())
        _update_with_tensor(h, tensor)
    return h.hexdigest()


def code_digest(model: Any) -> str:
    """sha256 of the code that computes a model's log-weights.

    Covers the source file of every module that the model's classes (the model's and its
    submodules', with all their bases) come from, the module of the ``factory=`` that built it
    (:data:`evalkit.models.checkpoints.FACTORY_MODULE_ATTRIBUTE`), the code of TorchScript
    submodules, every source file of evalkit itself, and torch's version (torch's own files are
    named, not read: its version stands for them). Editing a glue model's ``log_weights`` thus
    changes the digest although its weights do not.
    """
    import torch.nn as nn

    from ..models.checkpoints import FACTORY_MODULE_ATTRIBUTE

    h = hashlib.sha256()
    h.update(f"torch {torch.__version__}\nevalkit {_evalkit_source_digest()}\n".encode())
    parts = list(model.modules()) if isinstance(model, nn.Module) else [model]
    module_names = {base.__module__ for part in parts for base in type(part).__mro__}
    factory_module = getattr(model, FACTORY_MODULE_ATTRIBUTE, None)
    if isinstance(factory_module, str):
        module_names.add(factory_module)
    for name in sorted(module_names):
        h.update(f"module {name} {_module_source_digest(name)}\n".encode())
    for part in parts:
        code = getattr(part, "code", None) if isinstance(part, torch.jit.ScriptModule) else None
        if isinstance(code, str):
            h.update(b"script ")
            h.update(code.encode())
    return h.hexdigest()


def _module_source_digest(name: str) -> str:
    # A module's source file, read now (an edit between two runs must show); torch's are named
    # only (its version is hashed), evalkit's are in _evalkit_source_digest.
    if name.split(".")[0] in ("torch", "builtins", "evalkit"):
        return "-"
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if not path:
        return "no-file"
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


@functools.lru_cache(maxsize=1)
def _evalkit_source_digest() -> str:
    # Every .py file of the installed evalkit package (it does not change during a run).
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(f"{path.relative_to(root).as_posix()}\n".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256()
    _update_with_tensor(h, tensor)
    return h.hexdigest()



def _named_tensors(model: Any) -> List[Tuple[str, torch.Tensor]]:
    # Parameters and all buffers (non-persistent ones too: they can change the numbers).
    tensors: Dict[str, torch.Tensor] = {}
    if isinstance(model, torch.nn.Module):
        for name, tensor in model.named_parameters(remove_duplicate=False):
            tensors[name] = tensor
        for name, tensor in model.named_buffers(remove_duplicate=False):
            tensors[name] = tensor
        with contextlib.suppress(Exception):
            for name, tensor in model.state_dict(keep_vars=True).items():
                if isinstance(tensor, torch.Tensor):
                    tensors.setdefault(name, tensor)
    else:
        # A protocol object that is not a Module: its tensor attributes are its state.
        for name, value in sorted(vars(model).items()):
            if isinstance(value, torch.Tensor):
                tensors[name] = value
    return sorted(tensors.items())


def _model_config(model: Any) -> Any:
    # evalkit's models describe their architecture with get_config(); others may not.
    get_config = getattr(model, "get_config", None)
    if callable(get_config):
        try:
            return get_config()
        except NotImplementedError:
            return None
    return None


def _update_with_tensor(h: "hashlib._Hash", tensor: torch.Tensor) -> None:
    t = tensor.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    t = t.to("cpu").contiguous()
    h.update(f"{t.dtype} {tuple(t.shape)}\n".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _combine(components: Dict[str, Any]) -> str:
    text = json.dumps(components, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _device_type(device: Any) -> str:
    # CPU and GPU arithmetic differ in the last bits, so shards from both are never mixed.
    from .engine import resolve_device

    return resolve_device(None if device == "auto" else device).type
