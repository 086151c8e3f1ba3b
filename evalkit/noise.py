"""Per-datapoint random streams.

Every random number evalkit draws belongs to one datapoint of the full dataset, so results do
not depend on batch size, chunk size, data order or how the data are split across processes:

* importance-sampling noise: datapoint ``n``'s standard-normal noise for sample columns
  ``[k0, k1)`` is a fixed function of ``(seed, n)``, whatever the batching;
* stochastic binarisation (:mod:`evalkit.data`): datapoint ``n``'s uniforms are a fixed
  function of ``(seed, n)``.

Streams are numpy ``Philox`` counter-based generators keyed by the full 128-bit pair
``(seed, dataset index)``; the 256-bit counter separates the purpose of a stream (noise,
binarisation) and, for noise, the block of :data:`NOISE_BLOCK` sample columns. Because the
standard-normal sampler (ziggurat) consumes a variable number of raw draws, columns are grouped
into fixed blocks: a block is always generated whole and then sliced, so the noise of a column
never depends on which other columns were asked for.

Why not ``torch.Generator``: a CPU ``torch.Generator`` seeds its Mersenne Twister from the low
32 bits of the seed only (``manual_seed(1)`` and ``manual_seed(1 + 2**32)`` give identical
numbers), so per-(datapoint, block) streams would collide by the birthday bound (about 170
colliding blocks for 60 000 datapoints x 5 000 samples). Philox keys carry all 128 bits.

Noise is generated in float64 and cast to the compute dtype, so a float32 run and a float64 run
see the same samples (rounded), which makes float32 error directly measurable.
"""
from __future__ import annotations

from concurrent.futures import Executor
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import InputError

NOISE_BLOCK = 256
"""Number of sample columns generated together from one stream position (see module notes)."""

_MAX_UINT64 = 2**64 - 1

# Purpose of a stream, stored in the top 64-bit word of the Philox counter.
_PURPOSE_NOISE = 0
_PURPOSE_BINARIZE = 1


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
        0 for importance-sampling noise, 1 for binarisation.
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
            stream(self.seed, self.indices[row], block=block).standard_normal(out=buffer[row])

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
        pieces = []
        for block in range(k0 // NOISE_BLOCK, (k1 - 1) // NOISE_BLOCK + 1):
            if block != self._block_index:
                self._fill_block(block)
            start = max(k0 - block * NOISE_BLOCK, 0)
            stop = min(k1 - block * NOISE_BLOCK, NOISE_BLOCK)
            pieces.append(self._block[:, start:stop].clone())
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)


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

    This is exactly the noise :func:`evalkit.engine.log_weights` passes to
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
