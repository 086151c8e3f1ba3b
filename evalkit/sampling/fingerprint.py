"""Fingerprints of a log-weight computation: sha256 digests of the model, the data, and the settings.

A cache (:mod:`evalkit.sampling.cache`) is reused only for the same fingerprint. It covers what
determines the numbers: the model (class, config, and every parameter and buffer: name, dtype,
shape, bytes), the data (dtype, shape, bytes), K, the seed, the compute dtype, the device type,
``compile`` and (on CUDA) ``tf32``, the evalkit version and the cache format; nothing else.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any, Dict, List, Tuple

import torch

#: Version of the cache layout and fingerprint recipe; a cache of another version is refused.
CACHE_FORMAT_VERSION = 1


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
        as plain values; ``model`` and ``data`` as sha256 hex digests. ``tf32`` only counts on
        CUDA (it changes nothing on the CPU).
    """
    from .._version import __version__

    device_type = _device_type(device)
    return {
        "format": CACHE_FORMAT_VERSION,
        "evalkit": __version__,
        "model": model_digest(model),
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
