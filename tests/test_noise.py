"""Per-datapoint noise streams: SFC64 seeded from Philox, checked against a pure-Python SFC64."""
import numpy as np
import pytest
import torch
from scipy import stats

from evalkit.noise import NOISE_BLOCK, NoiseBlocks, _Streams, draw_noise, noise_stream, stream

# Pinned-number tests: .ci/run runs them a second time with the wide vector units off.
pytestmark = pytest.mark.pinned

_MASK = 2**64 - 1


def _sfc64_outputs(words, n):
    """SFC64 written out (Chris Doty-Humphrey's step), seeded as numpy seeds it: (a, b, c, 1), 12 rounds dropped."""
    a, b, c = (int(w) for w in words)
    counter = 1
    out = []
    for step in range(12 + n):
        tmp = (a + b + counter) & _MASK
        counter += 1
        a = b ^ (b >> 11)
        b = (c + (c << 3)) & _MASK
        c = (((c << 24) | (c >> 40)) & _MASK) + tmp & _MASK
        if step >= 12:
            out.append(tmp)
    return out


@pytest.mark.parametrize("seed, index, block", [(0, 0, 0), (7, 123, 3), (2**64 - 1, 2**63 + 5, 17)])
def test_noise_stream_is_sfc64_seeded_with_three_philox_words(seed, index, block):
    words = stream(seed, index, purpose=0, block=block).bit_generator.random_raw(3)
    expected = _sfc64_outputs(words, 6)
    assert noise_stream(seed, index, block=block).bit_generator.random_raw(6).tolist() == expected


def test_thread_local_streams_equal_fresh_ones():
    streams = _Streams()
    for seed, index, block in [(0, 0, 0), (5, 9, 1), (5, 9, 0), (2**64 - 1, 2**64 - 1, 40)]:
        reused = streams.noise(seed, index, block=block).standard_normal(300)
        fresh = noise_stream(seed, index, block=block).standard_normal(300)
        np.testing.assert_array_equal(reused, fresh)
        reused = streams.get(seed, index, purpose=1).random(50)
        np.testing.assert_array_equal(reused, stream(seed, index, purpose=1).random(50))


def test_every_bit_of_seed_and_index_names_a_different_stream():
    # torch's CPU generator would give identical numbers for seeds 1 and 1 + 2**32.
    first = noise_stream(1, 0).standard_normal(8)
    for seed, index, block in [(1 + 2**32, 0, 0), (1 + 2**63, 0, 0), (1, 2**32, 0), (1, 2**63, 0), (1, 0, 1), (0, 1, 0)]:
        assert not np.array_equal(first, noise_stream(seed, index, block=block).standard_normal(8))


def test_noise_columns_do_not_depend_on_the_columns_asked_for():
    whole = draw_noise(3, [4, 9], 0, 3 * NOISE_BLOCK, (5,))
    for k0, k1 in [(0, 1), (NOISE_BLOCK - 3, NOISE_BLOCK + 2), (2 * NOISE_BLOCK + 7, 3 * NOISE_BLOCK)]:
        assert torch.equal(draw_noise(3, [4, 9], k0, k1, (5,)), whole[:, k0:k1])
    assert torch.equal(draw_noise(3, [9], 0, 40, (5,)), whole[1:, :40])
    blocks = NoiseBlocks(3, [4, 9], (5,))
    assert torch.equal(torch.cat([blocks.columns(0, 100), blocks.columns(100, 700)], dim=1), whole[:, :700])


def test_noise_is_standard_normal_and_independent_across_datapoints():
    noise = draw_noise(0, range(64), 0, 2 * NOISE_BLOCK, (4,)).numpy()
    flat = noise.reshape(-1)
    n = flat.size  # 131 072
    # Deterministic (seeded) checks; bounds are about 4 standard errors.
    assert abs(flat.mean()) < 4 / np.sqrt(n)
    assert abs(flat.var() - 1) < 4 * np.sqrt(2 / n)
    assert stats.kstest(flat, "norm").pvalue > 1e-4
    # Neighbouring datapoints and blocks are uncorrelated.
    per_datapoint = noise.reshape(64, -1)
    correlation = np.corrcoef(per_datapoint)[np.triu_indices(64, 1)]
    assert np.abs(correlation).max() < 5 / np.sqrt(per_datapoint.shape[1])
    first_block, second_block = noise[:, :NOISE_BLOCK].reshape(-1), noise[:, NOISE_BLOCK:].reshape(-1)
    assert abs(np.corrcoef(first_block, second_block)[0, 1]) < 4 / np.sqrt(first_block.size)
