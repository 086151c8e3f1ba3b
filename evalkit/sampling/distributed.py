"""Sharding a run across the processes that ``torchrun`` starts.

Launch any evalkit command that computes log-weights under ``torchrun``; each process
computes a contiguous range of datapoints and rank 0 gathers them and writes the output::

    torchrun --nproc_per_node 2 -m evalkit estimate model.pt --data mnist.npy -k 5000 -o out.json

How the result stays identical to a single-process run with the same seed: process ``r`` of
``W`` computes datapoints ``[N r / W, N (r + 1) / W)`` with ``indices=arange(a, b)``, so each
datapoint draws its noise from its own ``(seed, index)`` stream and sits in the same position
of a model call as in the full run (see :mod:`evalkit.sampling.engine`); on the CPU the rows are then
bitwise those of the single-process run. Rank 0 gathers the rows (padded to equal length, over
gloo on the CPU) and computes the estimators; the other ranks return ``None`` and print nothing.

Failing together: a process that fails (a model error on its rows, an output that exists on
rank 0, a data file it cannot read) must not leave the others waiting in a collective. Every
gather is preceded by :func:`agree`, an all-gather of each process's status over the gloo
group; a failing process takes part in that same all-gather with its error
(:func:`share_failure`), so every process learns of it within the collective and raises
:class:`OtherRankError` with the failing rank's sentence and exit code. The command line also
agrees once after rank 0 has checked the outputs, before any process starts computing.

Backends: NCCL when the processes compute on GPUs (each takes ``cuda:LOCAL_RANK``), gloo on
the CPU. The gather itself always runs over a gloo group on CPU tensors, so rank 0 never holds
the whole ``[N, K]`` matrix in GPU memory. On the CPU the default memory budget is split
between the processes on one machine (``LOCAL_WORLD_SIZE``), and each process uses
``torch.get_num_threads()`` worker threads (torchrun sets ``OMP_NUM_THREADS=1`` by default).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist

from ..errors import EvalkitError, InputError, ResourceError, describe_exception

INIT_TIMEOUT = timedelta(minutes=10)
"""How long processes wait for each other at start-up and at the gather."""


@dataclass(frozen=True)
class Context:
    """Where this process stands in a ``torchrun`` launch.

    Attributes
    ----------
    rank, world_size : int
        This process's rank and the number of processes.
    local_rank, local_world_size : int
        The same on this machine.
    device : torch.device
        Where this process computes: ``cuda:LOCAL_RANK`` with NCCL, else the CPU.
    gather_group : object
        The gloo process group the log-weights are gathered over.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    gather_group: Any

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that gathers the results and writes the outputs."""
        return self.rank == 0


_context: Optional[Context] = None
_shared = False  # this process has told the others of its failure (or the group is gone)


class OtherRankError(EvalkitError):
    """Another torchrun process failed; raised on every process that did not.

    ``str(error)`` is the failing process's own sentence and ``exit_code`` its exit status, so
    that every process exits with the same code and rank 0 can print what went wrong.
    """

    def __init__(self, message: str, exit_code: int = 1, failed_rank: int = 0) -> None:
        super().__init__(message)
        self.exit_code, self.failed_rank = exit_code, failed_rank


def launched_by_torchrun() -> bool:
    """Return True when this process is one of several started by ``torchrun`` (``WORLD_SIZE > 1``)."""
    return _env_int("WORLD_SIZE", 1) > 1


def rank() -> int:
    """This process's rank (0 when not launched by torchrun)."""
    return _env_int("RANK", 0) if launched_by_torchrun() else 0


def init(device: Optional[Any] = None) -> Optional[Context]:
    """Join the process group ``torchrun`` describes in the environment; None in a single process.

    Parameters
    ----------
    device : str or torch.device, optional
        ``None``/``"auto"``: a GPU per process when CUDA is available, else the CPU. ``"cuda"``
        requires enough visible GPUs for the processes on this machine.

    Returns
    -------
    Context or None
        The same object on every later call in this process.

    Raises
    ------
    ResourceError
        ``device="cuda"`` without a GPU for every local process.
    """
    global _context, _shared
    if _context is not None:
        return _context
    if not launched_by_torchrun():
        return None
    world_size, my_rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    local_rank, local_world_size = _env_int("LOCAL_RANK", 0), _env_int("LOCAL_WORLD_SIZE", world_size)
    wanted = None if device in (None, "auto") else torch.device(device).type
    if wanted not in (None, "cpu", "cuda"):
        raise InputError(f"Expected `device` to be 'auto', 'cpu' or 'cuda' under torchrun, got {device!r}.")
    use_cuda = wanted == "cuda" or (wanted is None and torch.cuda.is_available())
    if use_cuda and torch.cuda.device_count() < local_world_size:
        if wanted == "cuda":
            raise ResourceError(
                f"torchrun started {local_world_size} processes on this machine but torch sees "
                f"{torch.cuda.device_count()} GPU(s); start at most that many (--nproc_per_node) or use --device cpu."
            )
        use_cuda = False
    if use_cuda:
        torch.cuda.set_device(local_rank)
        compute_device = torch.device("cuda", local_rank)
    else:
        compute_device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=INIT_TIMEOUT)
    # The gather moves CPU tensors: a gloo group beside an NCCL default group.
    gather_group = dist.new_group(backend="gloo", timeout=INIT_TIMEOUT) if dist.get_backend() != "gloo" else None
    _context = Context(my_rank, world_size, local_rank, local_world_size, compute_device, gather_group)
    _shared = False
    return _context


def shard(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Return the datapoints ``[start, stop)`` of process ``rank``: contiguous, sizes differing by at most one."""
    return n * rank // world_size, n * (rank + 1) // world_size


def log_weights(model: torch.nn.Module, data: torch.Tensor, k: int, *, seed: int = 0, sampler: Optional[Any] = None,
                **engine_options: Any) -> Optional[torch.Tensor]:
    """Compute :func:`evalkit.log_weights` with the datapoints split across torchrun's processes.

    Parameters
    ----------
    model, data, k, seed
        As for :func:`evalkit.log_weights`; every process passes the whole dataset.
    **engine_options
        Passed on (``batch_size``, ``k_chunk``, ``memory_budget``, ``dtype``, ``threads``,
        ``compile``, ``tf32``, ``progress``); ``device`` chooses between GPUs and the CPU
        (see :func:`init`). ``indices`` is not accepted: shards are ranges of ``data``'s rows.
    sampler : callable, optional
        Replaces the engine (same signature), e.g. annealed importance sampling.

    Returns
    -------
    Tensor, shape (N, k), float64, CPU, on rank 0; None on the other ranks
        Without torchrun, simply ``evalkit.log_weights(model, data, k, seed=seed, ...)``.
    """
    from .engine import log_weights as plain_engine_log_weights
    from .memory import default_memory_budget

    engine_log_weights = sampler or plain_engine_log_weights  # annealed importance sampling, or the engine

    if "indices" in engine_options:
        raise InputError("log_weights under torchrun shards the rows of `data`; pass the rows you want as data, not indices.")
    context = init(engine_options.pop("device", None))
    if context is None:
        return engine_log_weights(model, data, k, seed=seed, **engine_options)
    engine_options["device"] = context.device
    if context.device.type == "cpu" and engine_options.get("memory_budget") is None:
        # Processes on one machine share its memory.
        engine_options["memory_budget"] = max(1, default_memory_budget(context.device) // context.local_world_size)
    if not context.is_main:
        engine_options["progress"] = False
    start, stop = shard(len(data), context.rank, context.world_size)
    try:
        if stop > start:
            local = engine_log_weights(model, data[start:stop], k, seed=seed, indices=torch.arange(start, stop),
                                       **engine_options)
        else:  # more processes than datapoints
            local = torch.empty(0, k, dtype=torch.float64)
    except Exception as exc:  # the others are (or will be) in agree() below: tell them, then fail here
        share_failure(describe(exc))
        raise
    agree()
    return gather_rows(local, len(data), context)


def describe(exc: BaseException) -> str:
    """The one sentence that reports ``exc`` (:func:`evalkit.errors.describe_exception`)."""
    return describe_exception(exc)


def agree(device: Optional[Any] = None) -> None:
    """Wait until every process gets here or fails; raise :class:`OtherRankError` if one failed.

    A collective over the gloo group (all-gather of each process's status, a few bytes): each
    process calls it with nothing to report, a failing one takes part through
    :func:`share_failure` instead. No-op in a single process. ``device`` is passed to
    :func:`init` when the group does not exist yet.

    Raises
    ------
    OtherRankError
        With the sentence and exit code of the lowest failing rank.
    """
    if not launched_by_torchrun():
        return
    failures = _exchange(None, device)
    if failures:
        failed_rank, message, exit_code = failures[0]
        global _shared
        _shared = True  # every process knows; none waits for another word from this one
        raise OtherRankError(message, exit_code, failed_rank)


def share_failure(message: str, exit_code: int = 1, device: Optional[Any] = None) -> None:
    """Tell the other processes that this one failed, inside the :func:`agree` they are waiting in.

    Called once, where the failing process would otherwise leave (the command line's error
    handler, :func:`log_weights`); later calls, a single process, and a process group that is
    already finished are no-ops. If the others have already left (the failure came after the last
    collective), the exchange fails and is ignored: there is nobody left to tell.
    """
    global _shared
    if _shared or not launched_by_torchrun():
        return
    _shared = True
    try:
        _exchange((rank(), message, exit_code), device)
    except Exception:  # noqa: BLE001 -- the others are gone, or the group cannot be joined: nothing to tell
        pass


def _exchange(status: Optional[tuple], device: Optional[Any]) -> list:
    """All-gather every process's status; return the failures ``(rank, message, exit_code)`` by rank."""
    context = init(device)
    statuses: list = [None] * context.world_size
    dist.all_gather_object(statuses, status, group=context.gather_group)
    return sorted(s for s in statuses if s is not None)


def gather_rows(local: torch.Tensor, n: int, context: Context,
                sizes: Optional[list] = None) -> Optional[torch.Tensor]:
    """Gather every process's shard (:func:`shard` of ``n`` rows) on rank 0, in row order.

    Shards are padded to the longest one so that one ``gather`` moves them; rank 0 returns the
    ``[n, ...]`` concatenation, the other ranks None. ``sizes`` gives each rank's number of
    rows when they are not :func:`shard`'s (the cache splits whole shards between the ranks).
    """
    if sizes is None:
        sizes = [stop - start for start, stop in (shard(n, r, context.world_size) for r in range(context.world_size))]
    longest = max(sizes)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype)
    padded[: len(local)] = local
    if context.is_main:
        pieces = [torch.empty_like(padded) for _ in range(context.world_size)]
        dist.gather(padded, pieces, dst=0, group=context.gather_group)
        return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)])
    dist.gather(padded, None, dst=0, group=context.gather_group)
    return None


def finish() -> None:
    """Leave the process group (after the last collective of the run); no-op in a single process."""
    global _context, _shared
    if _context is not None and dist.is_initialized():
        dist.destroy_process_group()
        _shared = True  # the collectives are over: a later failure has nobody to tell
    _context = None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not an integer; launch with torchrun.") from None


__all__ = ["Context", "OtherRankError", "agree", "describe", "finish", "gather_rows", "init", "launched_by_torchrun",
           "log_weights", "rank", "share_failure", "shard"]
