"""CPU worker threads over independent model calls, each thread with one intra-op thread.

torch releases the GIL inside its kernels, so on a multi-core CPU several Python threads, each
running whole calls with one intra-op thread, keep the cores busy with less synchronisation
than one call split across the cores by intra-op parallelism (which pays a barrier per
kernel, a large share of a small network's kernels). Every call still runs on one intra-op
thread, as it would from the calling thread, so the numbers do not depend on the number of
workers. The importance-sampling engine (:mod:`.runner`) and AIS (:mod:`.ais`) share this pool.

May import torch only.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator, List, Sequence, TypeVar

import torch

Item = TypeVar("Item")


@contextmanager
def intra_op_threads(n_threads: int) -> Iterator[None]:
    """Set torch's intra-op threads of the calling thread for a while, then restore them."""
    previous = torch.get_num_threads()
    if previous == n_threads:
        yield
        return
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_in_workers(items: Sequence[Item], work: Callable[[Item], None], threads: int,
                   grad_mode: Callable[[], ContextManager] = torch.inference_mode) -> None:
    """Call ``work(item)`` for every item, on ``min(threads, len(items))`` worker threads.

    Items are handed out in order; each worker runs with one intra-op thread (also MKL's) and
    inside ``grad_mode()`` (autograd's mode is thread-local: pass ``torch.no_grad`` for work
    that takes gradients itself). ``work`` must only write to places no other item writes to,
    or lock. After an error no new item starts, and the error of the earliest failed item is
    raised in the calling thread once every worker has stopped.
    """
    threads = max(1, min(threads, len(items)))
    lock = threading.Lock()
    position = iter(enumerate(items))
    failures: List[tuple] = []
    stop = threading.Event()

    def worker() -> None:
        torch.set_num_threads(1)
        with grad_mode():
            while not stop.is_set():
                with lock:
                    number, item = next(position, (None, None))
                if number is None:
                    return
                try:
                    work(item)
                except BaseException as error:  # re-raised in the calling thread
                    with lock:
                        failures.append((number, error))
                    stop.set()
                    return

    previous = torch.get_num_threads()
    pool = [threading.Thread(target=worker, name=f"evalkit-worker-{i}", daemon=True) for i in range(threads)]
    try:
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    finally:
        stop.set()
        for thread in pool:
            thread.join()
        # A worker's set_num_threads also changed the default for threads created later.
        torch.set_num_threads(previous)
    if failures:
        raise min(failures, key=lambda failure: failure[0])[1]


class LockedProgress:
    """A progress bar (or None) whose ``update`` several workers may call at once."""

    def __init__(self, bar) -> None:
        self.bar = bar
        self.lock = threading.Lock()

    def update(self, n: int) -> None:
        if self.bar is not None:
            with self.lock:
                self.bar.update(n)
