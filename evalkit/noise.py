"""Per-datapoint random streams.

Every random number evalkit draws belongs to one datapoint of the full dataset, so results do
not depend on batch size, chunk size, data order or how the data are split across processes:

* importance-sampling noise: datapoint ``n``'s standard-normal noise for sample columns
  ``[k0, k1)`` is a fixed function of ``(seed, n)``, whatever the batching;
* stochastic binarisation (:mod:`evalkit.data`): datapoint ``n``'s uniforms are a fixed
  function of ``(seed, n)``.

A stream is named by a numpy ``Philox`` counter-based generator keyed by the full 128-bit pair
``(seed, dataset index)``; the 256-bit counter separates the purpose of a stream (noise,
binarisation) and, for noise, the block of :data:`NOISE_BLOCK` sample columns. Because the
standard-normal sampler (ziggurat) consumes a variable number of raw draws, columns are grouped
into fixed blocks: a block is always generated whole and then sliced, so the noise of a column
never depends on which other columns were asked for.

Noise is drawn from numpy's ``SFC64`` seeded with three 64-bit words of its Philox stream
(exactly numpy's own SFC64 seeding, with Philox in place of ``SeedSequence``): a Philox draw
costs about 6 ns here and a standard normal through it 12-15 ns, against 7-9 ns through SFC64,
and for the IWAE paper's two-layer model (150 normals per sample) that was a fifth of the
engine's time. The Philox key still carries every bit of ``(seed, index)``, and each block's
SFC64 starts from an independent random point of a 2**256 state space, of which a block uses
at most a few hundred thousand draws. (evalkit 0.1 drew the normals from Philox itself; the
same seed therefore gives other samples since 0.2.) Binarisation uniforms come from Philox
directly, as before.

Why not ``torch.Generator``: a CPU ``torch.Generator`` seeds its Mersenne Twister from the low
32 bits of the seed only (``manual_seed(1)`` and ``manual_seed(1 + 2**32)`` give identical
numbers), so per-(datapoint, block) streams would collide by the birthday bound (about 170
colliding blocks for 60 000 datapoints x 5 000 samples). Philox keys carry all 128 bits.

Noise is generated in float64 and cast to the compute dtype, so a float32 run and a float64 run
see the same samples (rounded), which makes float32 error directly measurable.
"""
from __future__ import annotations

import threading
from concurrent.futures import Executor
from typing import Optional, Sequence

import numpy as np
from numpy.random.bit_generator import ISeedSequence
import torch

from .errors import InputError

NOISE_BLOCK = 256
"""Number of sample columns generated together from one stream position (see module notes)."""

_MAX_UINT64 = 2**64 - 1

# Purpose of a stream, stored in the top 64-bit word of the Philox counter.
_PURPOSE_NOISE = 0
_PURPOSE_BINARIZE = 1
_PURPOSE_BNN_WEIGHTS = 2  # a Bayesian network's weight noise; the index is the weight-sample index
# Annealed importance sampling (:mod:`evalkit.sampling.ais`): each datapoint's initial draws,
# HMC momenta and accept/reject uniforms, separately for forward and reverse runs, and the
# simulation of (z, x) pairs for bidirectional Monte Carlo.
_PURPOSE_AIS_INITIAL = 3
_PURPOSE_AIS_MOMENTUM = 4
_PURPOSE_AIS_ACCEPT = 5
_PURPOSE_AIS_REVERSE_MOMENTUM = 6
_PURPOSE_AIS_REVERSE_ACCEPT = 7
_PURPOSE_BDMC_SIMULATION = 8
# The pilot chains' trial transitions that choose AIS's first step size (:mod:`evalkit.sampling.ais_step_size`).
_PURPOSE_AIS_TUNE_MOMENTUM = 9
_PURPOSE_AIS_TUNE_ACCEPT = 10


def check_seed(seed: int) -> int:
    """Return ``seed`` as an int after checking it is in ``[0, 2**64)``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"Expected argument `seed` to be a non-negative int, got {seed!r}.")
    seed = int(seed)
    if not 0 <= seed <= _MAX_UINT64:
        raise InputError(f"Expected argument `seed` to be in [0, 2**64), got {seed}.")
    return seed


def stream(seed: int, index: int, *, purpose: int = _PURPOSE_NOISE, block: int = 0) -> np.random.Generator:
    """Return the random stream of one datapoint.

    Parameters
    ----------
    seed : int
        Run seed, ``0 <= seed < 2**64``.
    index : int
        Index of the datapoint in the full dataset, ``0 <= index < 2**64``.
    purpose : int, default 0
        0 for importance-sampling noise, 1 for binarisation, 2 for a Bayesian network's weight
        noise (then ``index`` is the weight-sample index, not a datapoint), 3-8 for annealed
        importance sampling and BDMC (the ``_PURPOSE_*`` constants).
    block : int, default 0
        Block of :data:`NOISE_BLOCK` sample columns.

    Returns
    -------
    numpy.random.Generator
        A Philox generator with key ``(index << 64) | seed`` and counter
        ``(purpose << 192) | (block << 64)``; distinct arguments give independent streams.
    """
    key = (int(index) << 64) | int(seed)
    counter = (int(purpose) << 192) | (int(block) << 64)
    return np.random.Generator(np.random.Philox(key=key, counter=counter))


_SFC64_SEED_WORDS = 3
"""64-bit words of an SFC64 seed (numpy sets state ``(a, b, c, counter=1)`` and runs 12 rounds)."""


class _PhiloxSeedWords(ISeedSequence):
    """Hands numpy's SFC64 seeding the first words of a Philox stream instead of a SeedSequence's."""

    def __init__(self, philox: np.random.Generator) -> None:
        self.philox = philox

    def generate_state(self, n_words: int, dtype=np.uint32) -> np.ndarray:
        if n_words != _SFC64_SEED_WORDS or np.dtype(dtype) != np.uint64:
            raise ValueError(f"SFC64 seeding asked for {n_words} words of {np.dtype(dtype)}; expected 3 of uint64")
        return self.philox.bit_generator.random_raw(n_words)


def noise_stream(seed: int, index: int, *, block: int = 0) -> np.random.Generator:
    """Return the generator of one block of a datapoint's importance-sampling noise.

    ``seed``, ``index`` and ``block`` are those of :func:`stream`.

    Returns
    -------
    numpy.random.Generator
        An ``SFC64`` generator seeded, as ``numpy.random.SFC64(seed_sequence)`` seeds it, with
        the first three raw words of ``stream(seed, index, purpose=0, block=block)``.
    """
    philox = stream(seed, index, purpose=_PURPOSE_NOISE, block=block)
    return np.random.Generator(np.random.SFC64(_PhiloxSeedWords(philox)))


class _Streams(threading.local):
    """Reusable generators per thread, moved to a stream by setting their state.

    Give exactly the streams of :func:`stream` and :func:`noise_stream` (a test checks it) in
    a few microseconds instead of the 10-20 us of constructing generators, which for a small
    model is a noticeable part of a block's cost (a 256 x 8 block of normals takes about 20 us).
    """

    def __init__(self) -> None:
        self.bit_generator = np.random.Philox()
        self.generator = np.random.Generator(self.bit_generator)
        self.counter = np.zeros(4, dtype=np.uint64)
        self.key = np.zeros(2, dtype=np.uint64)
        self.sfc64 = np.random.SFC64()
        self.noise_generator = np.random.Generator(self.sfc64)
        self.sfc64_state = np.ones(4, dtype=np.uint64)

    def get(self, seed: int, index: int, *, purpose: int = _PURPOSE_NOISE, block: int = 0) -> np.random.Generator:
        """Return :func:`stream` ``(seed, index, purpose=purpose, block=block)``."""
        self.counter[1], self.counter[3] = block, purpose
        self.key[0], self.key[1] = seed, index
        self.bit_generator.state = {
            "bit_generator": "Philox",
            "state": {"counter": self.counter, "key": self.key},
            "buffer": np.zeros(4, dtype=np.uint64),
            "buffer_pos": 4,
            "has_uint32": 0,
            "uinteger": 0,
        }
        return self.generator

    def noise(self, seed: int, index: int, *, block: int = 0, purpose: int = _PURPOSE_NOISE) -> np.random.Generator:
        """Return :func:`noise_stream` ``(seed, index, block=block)``; another ``purpose`` gives
        the SFC64 generator seeded the same way from ``stream(seed, index, purpose, block)``."""
        words = self.get(seed, index, purpose=purpose, block=block).bit_generator.random_raw(_SFC64_SEED_WORDS)
        self.sfc64_state[:_SFC64_SEED_WORDS] = words  # the fourth word, SFC64's counter, starts at 1
        self.sfc64.state = {"bit_generator": "SFC64", "state": {"state": self.sfc64_state}, "has_uint32": 0, "uinteger": 0}
        self.sfc64.random_raw(12)  # numpy's seeding runs 12 rounds before the first output
        return self.noise_generator

    def scratch(self, noise_shape: tuple[int, ...]) -> np.ndarray:
        """Return this thread's float64 buffer for one block of one datapoint."""
        shape = (NOISE_BLOCK, *noise_shape)
        buffer = getattr(self, "_scratch", None)
        if buffer is None or buffer.shape != shape:
            buffer = self._scratch = np.empty(shape)
        return buffer


_STREAMS = _Streams()


class NoiseBlocks:
    """Standard-normal noise of a fixed set of datapoints, served by sample column.

    Holds the most recently generated block (``[B, NOISE_BLOCK, *noise_shape]`` float64), so
    that consecutive chunks smaller than a block do not regenerate it.

    Parameters
    ----------
    seed : int
        Run seed.
    indices : sequence of int, length B
        Dataset index of each datapoint.
    noise_shape : tuple of int
        Shape of the noise of one importance sample.
    executor : concurrent.futures.Executor, optional
        Generates the datapoints of a block in parallel (numpy releases the GIL while sampling).
    """

    def __init__(
        self,
        seed: int,
        indices: Sequence[int],
        noise_shape: tuple[int, ...],
        *,
        executor: Optional[Executor] = None,
    ) -> None:
        self.seed = check_seed(seed)
        self.indices = [int(i) for i in indices]
        self.noise_shape = tuple(int(s) for s in noise_shape)
        self.executor = executor
        self._block_index = -1
        self._block = torch.empty((len(self.indices), NOISE_BLOCK, *self.noise_shape), dtype=torch.float64)

    def _fill_block(self, block: int) -> None:
        buffer = self._block.numpy()

        def fill(row: int) -> None:
            _STREAMS.noise(self.seed, self.indices[row], block=block).standard_normal(out=buffer[row])

        rows = range(len(self.indices))
        if self.executor is None or len(self.indices) < 4:
            for row in rows:
                fill(row)
        else:
            list(self.executor.map(fill, rows))
        self._block_index = block

    def columns(self, k0: int, k1: int) -> torch.Tensor:
        """Return the noise of sample columns ``[k0, k1)``.

        Returns
        -------
        Tensor, shape (B, k1 - k0, *noise_shape), float64, CPU
        """
        if not 0 <= k0 < k1:
            raise InputError(f"Expected 0 <= k0 < k1 for the noise columns, got k0={k0}, k1={k1}.")
        out = torch.empty((len(self.indices), k1 - k0, *self.noise_shape), dtype=torch.float64)
        self.write_columns(k0, k1, out)
        return out

    def write_columns(self, k0: int, k1: int, out: torch.Tensor, slots: Optional[torch.Tensor] = None) -> None:
        """Write the noise of sample columns ``[k0, k1)`` into ``out``, casting to its dtype.

        Parameters
        ----------
        k0, k1 : int
            Sample columns, ``0 <= k0 < k1``.
        out : Tensor, shape (S, >= k1 - k0, *noise_shape), CPU
            Datapoint ``b`` goes to ``out[slots[b], :k1 - k0]``; other entries are left as they are.
        slots : LongTensor, shape (B,), optional
            Rows of ``out``; default ``0 .. B - 1``.
        """
        if not 0 <= k0 < k1:
            raise InputError(f"Expected 0 <= k0 < k1 for the noise columns, got k0={k0}, k1={k1}.")
        if self.executor is not None and len(self.indices) >= 4:
            self._write_rows_in_parallel(k0, k1, out, slots)
            return
        for block in range(k0 // NOISE_BLOCK, (k1 - 1) // NOISE_BLOCK + 1):
            if block != self._block_index:
                self._fill_block(block)
            start = max(k0 - block * NOISE_BLOCK, 0)
            stop = min(k1 - block * NOISE_BLOCK, NOISE_BLOCK)
            first = block * NOISE_BLOCK + start - k0
            piece = self._block[:, start:stop]
            if slots is None:
                out[: len(self.indices), first:first + stop - start].copy_(piece)
            else:
                # index_copy_ wants matching dtypes: cast once, then scatter the rows.
                out[:, first:first + stop - start].index_copy_(0, slots, piece.to(out.dtype))


    def _write_rows_in_parallel(self, k0: int, k1: int, out: torch.Tensor, slots: Optional[torch.Tensor]) -> None:
        """Draw each datapoint's blocks in its own task and write them straight into ``out``.

        For a GPU's many columns per call: the casting copy runs in the worker threads too
        (numpy releases the GIL for both), not in the thread that drives the GPU. Blocks are
        not cached across calls.
        """
        destination = out.numpy()
        rows = range(len(self.indices)) if slots is None else slots.tolist()
        blocks = range(k0 // NOISE_BLOCK, (k1 - 1) // NOISE_BLOCK + 1)

        def fill(datapoint: int) -> None:
            scratch = _STREAMS.scratch(self.noise_shape)
            target = destination[rows[datapoint]]
            for block in blocks:
                _STREAMS.noise(self.seed, self.indices[datapoint], block=block).standard_normal(out=scratch)
                start = max(k0 - block * NOISE_BLOCK, 0)
                stop = min(k1 - block * NOISE_BLOCK, NOISE_BLOCK)
                first = block * NOISE_BLOCK + start - k0
                np.copyto(target[first:first + stop - start], scratch[start:stop], casting="same_kind")

        list(self.executor.map(fill, range(len(self.indices))))


def draw_noise(
    seed: int,
    indices: Sequence[int],
    k0: int,
    k1: int,
    noise_shape: tuple[int, ...],
    *,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Return the engine's importance-sampling noise for some datapoints and sample columns.

    This is exactly the noise :func:`evalkit.sampling.engine.log_weights` passes to
    ``model.log_weights``, so a computation written by hand can reproduce its log-weights.

    Parameters
    ----------
    seed : int
        Run seed.
    indices : sequence of int, length B
        Dataset index of each datapoint.
    k0, k1 : int
        Sample columns ``[k0, k1)``.
    noise_shape : tuple of int
        Shape of the noise of one sample (``model.noise_shape``).
    dtype : torch.dtype, default float64
        Drawn in float64, then cast.

    Returns
    -------
    Tensor, shape (B, k1 - k0, *noise_shape)
    """
    return NoiseBlocks(seed, indices, noise_shape).columns(k0, k1).to(dtype)


def binarization_uniforms(seed: int, index: int, size: int) -> np.ndarray:
    """Return the ``size`` uniforms in [0, 1) that binarise datapoint ``index`` (float64)."""
    return stream(seed, index, purpose=_PURPOSE_BINARIZE).random(size)
