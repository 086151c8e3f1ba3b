"""Reading checkpoints: recognising each kind from the file content, and matching state_dict keys.

* :func:`detect_checkpoint_kind` and ``_read_checkpoint`` -- read a file or directory once into a
  ``_Checkpoint`` (its kind, header, state_dict or module); the kinds are listed in
  :mod:`evalkit.models.checkpoints`, which builds the models from them;
* state-dict matching -- wrapper keys (``{"state_dict": ...}``), key prefixes (``model.``,
  ``module.``; :class:`PrefixStrippedWarning`), and loading weights into a built model with an
  error that lists missing and unexpected keys.

Files are read with ``torch.load(weights_only=True, map_location="cpu")`` unless
``allow_pickle=True``.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..atomic import check_input_file
from ..errors import CheckpointError
from .bnn_layouts import bnn_layout
from .iwae import REFERENCE_ANCHOR_KEY, is_reference_layout

PathLike = Union[str, os.PathLike]

FORMAT_NAME = "evalkit"
FORMAT_VERSION = 1
DIRECTORY_HEADER = "model.json"
DIRECTORY_WEIGHTS = "model.safetensors"
KINDS = ("evalkit", "safetensors", "torchscript", "iwae_reference", "bbb", "blitz", "bayesian_torch", "state_dict",
         "pickled_module")
BNN_KINDS = ("bbb", "blitz", "bayesian_torch")
"""The Bayes-by-backprop state_dict layouts (:mod:`evalkit.models.bnn_layouts`), loaded as a BayesianMLP."""

# Where training scripts commonly nest a state_dict.
STATE_DICT_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "weights")


class PrefixStrippedWarning(UserWarning):
    """A state_dict key prefix (``model.``, ``module.``) was detected and stripped."""


@dataclass
class _Checkpoint:
    """A checkpoint read once: its kind and what the loader of that kind needs."""

    kind: str
    path: Path
    header: Optional[dict] = None  # evalkit / safetensors header: model name and config
    state_dict: Optional[dict] = None
    module: Optional[nn.Module] = None


# ----------------------------------------------------------------------------------------------
# Reading and recognising


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping) and len(obj) > 0
        and all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in obj.items())
    )


def _unwrap_state_dict(obj: Any) -> Optional[dict]:
    """Return the state_dict in ``obj`` (itself, or under a common wrapper key), or None."""
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in STATE_DICT_WRAPPER_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
    return None


def _verified_zip_names(path: Path) -> Optional[list[str]]:
    """Check every record of the zip archive at ``path`` against its CRC-32; return the record names.

    Returns None for a file that is not a zip archive (a legacy ``torch.save`` pickle, which has no
    checksums). ``torch.load`` and ``torch.jit.load`` do not check the CRCs, so a record with flipped
    bytes would load as different weights; :meth:`zipfile.ZipFile.testzip` reads each record in
    1 MiB blocks (memory independent of the file size) and names the first that fails.

    Raises
    ------
    CheckpointError
        A record whose bytes do not match its CRC, or an archive too damaged to read.
    """
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = archive.namelist()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError) as err:
        # zlib.error: a compressed record too damaged to inflate; NotImplementedError: an unknown compression
        raise CheckpointError(f"{path} is a damaged zip archive ({err}); re-download or re-save the checkpoint.") from None
    if bad is not None:
        raise CheckpointError(f"{path} is damaged: its record '{bad}' does not match its CRC-32 checksum, so the weights "
                              "in it are not the ones saved; re-download or re-save the checkpoint.")
    return names


def _is_torchscript_archive(names: Optional[list[str]]) -> bool:
    return names is not None and any(name.endswith("/constants.pkl") or "/code/" in name for name in names)


def _read_header(path: Path) -> dict:
    check_input_file(path, "the JSON header", CheckpointError, must_exist=False)
    try:
        header = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read the JSON header {path} ({err}); it should be what save_model wrote.") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not an evalkit model header (no \"format\": \"evalkit\"); pass the weights file instead.")
    return header


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_input_file(path, "the weights file", CheckpointError, must_exist=False)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {path} as safetensors ({err}); check that the file is complete.") from None


def _torch_load(path: Path, allow_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"GLOBAL ([\w.]+)|unrecognized function ([\w.]+)", text)
        if allow_pickle or found is None:  # not a refusal of Python objects: a damaged or foreign file
            reason = next((line.strip() for line in reversed(text.splitlines()) if line.strip() and "documentation" not in line), "")
            raise CheckpointError(f"cannot read {path} with torch.load ({reason[:120]}); is it a complete PyTorch checkpoint?") from None
        raise CheckpointError(
            f"{path} contains pickled Python objects that safe loading refuses (it references {found.group(1) or found.group(2)}); "
            "if you trust the file, pass allow_pickle=True (CLI: --allow-pickle), which can run code stored in it."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0].split(". ")[0]
        raise CheckpointError(f"cannot read {path} with torch.load ({reason}); is it a PyTorch checkpoint?") from None
    except Exception as err:  # a text or foreign file trips the unpickler anywhere (KeyError, IndexError...)
        raise CheckpointError(
            f"cannot read {path} with torch.load (not a PyTorch file: {type(err).__name__}); is it a PyTorch checkpoint?"
        ) from None


_TORCHSCRIPT = object()
"""What :func:`_open_torch_file` returns for a TorchScript archive (loaded later by ``torch.jit.load``)."""


def _open_torch_file(path: Path, allow_pickle: bool) -> Any:
    """The one place a ``torch.save`` / ``torch.jit.save`` file is opened: verified, then read.

    A zip archive has its CRCs checked first (:func:`_verified_zip_names`); a TorchScript archive
    gives :data:`_TORCHSCRIPT`, anything else what ``torch.load`` reads.
    """
    names = _verified_zip_names(path)
    if _is_torchscript_archive(names):
        return _TORCHSCRIPT
    return _torch_load(path, allow_pickle)


def _read_checkpoint(path: PathLike, *, allow_pickle: bool = False) -> _Checkpoint:
    path = Path(path)
    check_input_file(path, "checkpoint", CheckpointError, directory_ok=True, must_exist=False)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path.")
    if path.is_dir():
        header_path = path / DIRECTORY_HEADER
        if not header_path.is_file():
            raise CheckpointError(f"directory {path} has no {DIRECTORY_HEADER}; save models with evalkit.save_model(model, directory).")
        header = _read_header(header_path)
        return _Checkpoint("safetensors", path, header, _read_safetensors(path / header.get("weights", DIRECTORY_WEIGHTS)))
    if path.suffix == ".json":
        header = _read_header(path)
        return _Checkpoint("safetensors", path, header, _read_safetensors(path.parent / header.get("weights", path.stem + ".safetensors")))
    if path.suffix == ".safetensors":
        header_path = path.with_suffix(".json")
        header = _read_header(header_path) if header_path.is_file() else None
        state_dict = _read_safetensors(path)
        if header is not None:
            return _Checkpoint("safetensors", path, header, state_dict)
        return _Checkpoint(_state_dict_kind(state_dict), path, state_dict=state_dict)
    obj = _open_torch_file(path, allow_pickle)
    if obj is _TORCHSCRIPT:
        return _Checkpoint("torchscript", path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT_NAME:
        return _Checkpoint("evalkit", path, header=dict(obj), state_dict=dict(obj.get("state_dict", {})))
    if isinstance(obj, nn.Module):
        return _Checkpoint("pickled_module", path, module=obj)
    state_dict = _unwrap_state_dict(obj)
    if state_dict is None:
        keys = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else []
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}" + (f" with keys {keys}" if keys else "")
            + f" and no state_dict (looked under {list(STATE_DICT_WRAPPER_KEYS)}); save model.state_dict() or use "
            "evalkit.save_model."
        )
    return _Checkpoint(_state_dict_kind(state_dict), path, state_dict=state_dict)


def _state_dict_kind(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"iwae_reference"``, a Bayes-by-backprop layout (:data:`BNN_KINDS`) or ``"state_dict"``."""
    if _reference_prefix(state_dict) is not None:
        return "iwae_reference"
    return bnn_layout(list(state_dict)) or "state_dict"


def detect_checkpoint_kind(path: PathLike, *, allow_pickle: bool = False) -> str:
    """Return the kind of checkpoint at ``path`` (one of :data:`KINDS`), read from its content.

    A state_dict that is not in the IWAE reference layout is ``"state_dict"`` (it needs a
    factory to load).
    """
    return _read_checkpoint(path, allow_pickle=allow_pickle).kind


# ----------------------------------------------------------------------------------------------
# State-dict matching


def _checkpoint_dtype(state_dict: Mapping[str, torch.Tensor]) -> Optional[torch.dtype]:
    dtypes = {value.dtype for value in state_dict.values() if value.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def _with_prefix(keys: Sequence[str], expected: Sequence[str], prefix: str) -> bool:
    keys = set(keys)
    return all(prefix + key in keys for key in expected)


def _candidate_prefixes(keys: Sequence[str], anchor: str) -> list[str]:
    """Prefixes ``p`` (ending in '.') with ``p + anchor`` among ``keys``."""
    suffix = "." + anchor
    return sorted({key[: -len(anchor)] for key in keys if key.endswith(suffix)}, key=len)


def _reference_prefix(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Return the prefix under which ``state_dict`` is in the IWAE reference layout, or None."""
    for prefix in ["", *_candidate_prefixes(list(state_dict), REFERENCE_ANCHOR_KEY)]:
        keys = [key[len(prefix):] for key in state_dict if key.startswith(prefix)]
        if is_reference_layout(keys):
            return prefix
    return None


def _strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _select_keys(
    state_dict: Mapping[str, torch.Tensor], expected: Sequence[str], prefix: Optional[str], path: Path
) -> dict:
    """Return the state_dict with the model's keys, after stripping an explicit or detected prefix."""
    if prefix is not None:
        stripped = _strip_prefix(state_dict, prefix)
        if not stripped:
            raise CheckpointError(
                f"no state_dict key in {path} starts with prefix={prefix!r} (keys look like {sorted(state_dict)[:4]}); "
                "pass the prefix the keys carry, or prefix='' for none."
            )
        return stripped
    if not expected or set(expected) <= set(state_dict):
        return dict(state_dict)
    matches = [p for p in _candidate_prefixes(list(state_dict), expected[0]) if _with_prefix(list(state_dict), expected, p)]
    if len(matches) > 1:
        raise CheckpointError(
            f"the state_dict in {path} holds the model's keys under several prefixes {matches}; pass prefix= to choose one."
        )
    if not matches:
        return dict(state_dict)
    stripped = _strip_prefix(state_dict, matches[0])
    ignored = len(state_dict) - len(stripped)
    warnings.warn(
        f"stripped the prefix '{matches[0]}' from the state_dict keys of {path}"
        + (f" and ignored {ignored} keys without it" if ignored else "")
        + f"; pass prefix='{matches[0]}' to say so explicitly.",
        PrefixStrippedWarning,
        stacklevel=3,
    )
    return stripped


def _mismatch_error(state_dict: Mapping[str, torch.Tensor], expected: Sequence[str], prefix: Optional[str], path: Path) -> CheckpointError:
    """Explain missing / unexpected keys, relative to the prefix most of the model's keys carry."""
    hint = "check that the factory builds the architecture the checkpoint was trained with"
    if prefix is None:
        counts = {p: sum(p + key in state_dict for key in expected)
                  for key in expected for p in _candidate_prefixes(list(state_dict), key)}
        if counts:
            prefix = max(counts, key=counts.get)
            state_dict = _strip_prefix(state_dict, prefix)
            hint = f"the keys carry the prefix '{prefix}' (a Lightning or wrapped checkpoint; pass prefix='{prefix}'), " + hint
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in set(expected)]

    def listed(keys: list) -> str:
        return f"{keys[:6]}" + (f" (and {len(keys) - 6} more)" if len(keys) > 6 else "")

    parts = ([f"is missing keys {listed(missing)}"] if missing else []) + (
        [f"has unexpected keys {listed(unexpected)}"] if unexpected else [])
    return CheckpointError(f"the state_dict in {path} {' and '.join(parts)}; {hint}.")


def _load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, prefix: Optional[str], path: Path) -> nn.Module:
    """Load ``state_dict`` into ``model`` strictly, converting the model to the checkpoint's dtype."""
    expected = model.state_dict()
    state_dict = _select_keys(state_dict, list(expected), prefix, path)
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        raise _mismatch_error(state_dict, list(expected), prefix, path)
    wrong = [(key, tuple(state_dict[key].shape), tuple(value.shape)) for key, value in expected.items()
             if tuple(state_dict[key].shape) != tuple(value.shape)]
    if wrong:
        key, got, want = wrong[0]
        raise CheckpointError(
            f"the state_dict in {path} has {len(wrong)} tensors of the wrong shape, e.g. '{key}' is {got} but the model "
            f"expects {want}; build the model with the sizes it was trained with."
        )
    dtype = _checkpoint_dtype(state_dict)
    if dtype is not None:
        model = model.to(dtype)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()

