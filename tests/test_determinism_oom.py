"""Device out-of-memory: the engine halves the call, retries, reports once, and the bits do not change.

Simulated on the CPU with a model that raises ``torch.OutOfMemoryError`` (what CUDA raises; it is
also ``torch.cuda.OutOfMemoryError``) whenever a call holds more than ``limit`` samples.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from evalkit.sampling.engine import log_weights
from evalkit.errors import ResourceError
from evalkit.models import MLPVAE

# Pinned-number tests: .ci/run runs them a second time with the wide vector units off.
pytestmark = pytest.mark.pinned

CALLS = []  # (slots, width, raised) of every model call


class OutOfMemoryAbove(MLPVAE):
    """An MLPVAE whose calls fail like a full GPU when they hold more than ``limit`` samples."""

    limit = None

    def log_weights(self, x, noise):
        slots, width = noise.shape[0], noise.shape[1]
        too_big = self.limit is not None and slots * width > self.limit
        CALLS.append((slots, width, too_big))
        if too_big:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {slots * width * 4} bytes")
        return super().log_weights(x, noise)


def _models(limit):
    torch.manual_seed(0)
    plain = MLPVAE(12, 3, (16,))
    failing = OutOfMemoryAbove(12, 3, (16,))
    failing.load_state_dict(plain.state_dict())
    failing.limit = limit
    return plain, failing


@pytest.fixture(autouse=True)
def fresh_calls():
    CALLS.clear()
    yield
    CALLS.clear()


def _data(n=100):
    return (torch.rand(n, 12, generator=torch.Generator().manual_seed(1)) < 0.5).float()


def test_columns_are_halved_until_the_call_fits_and_the_bits_are_unchanged():
    plain, failing = _models(limit=32 * 64)
    data = _data()
    options = dict(seed=5, batch_size=32, k_chunk=256, threads=1, progress=False)
    expected = log_weights(plain, data, 256, **options)
    with pytest.warns(RuntimeWarning) as record:
        got = log_weights(failing, data, 256, **options)
    assert torch.equal(got, expected)
    assert [str(w.message) for w in record] == [
        "out of cpu memory in a call of 32 datapoint slots x 256 samples; continuing with calls of at most "
        "32 x 128 (same results; a lower memory_budget starts there)"
    ]
    raised = [(s, w) for s, w, too_big in CALLS if too_big]
    # 256 fails, 128 fails, then every later call starts at 64 columns: two failures in the whole run.
    assert raised == [(32, 256), (32, 128)]
    assert {(s, w) for s, w, too_big in CALLS if not too_big} == {(32, 64)}


def test_slots_are_halved_when_the_columns_cannot_be():
    # k < 32: one call covers every column, so the engine cuts the datapoint slots instead.
    plain, failing = _models(limit=32 * 20)
    data = _data(130)
    options = dict(seed=2, batch_size=128, threads=1, progress=False)
    expected = log_weights(plain, data, 20, **options)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = log_weights(failing, data, 20, **options)
    assert torch.equal(got, expected)
    oom_warnings = [w for w in record if issubclass(w.category, RuntimeWarning)]
    assert len(oom_warnings) == 1
    assert "continuing with calls of at most 64 x 20" in str(oom_warnings[0].message)
    assert all(s <= 32 for s, w, too_big in CALLS if not too_big)


def test_out_of_memory_for_the_smallest_call_is_a_resource_error():
    _, failing = _models(limit=0)
    with pytest.raises(ResourceError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        log_weights(failing, _data(10), 64, batch_size=8, k_chunk=64, threads=1, progress=False)
    assert str(info.value) == (
        "out of cpu memory even for one call of 32 datapoint slots x 32 samples, the smallest evalkit makes; "
        "free device memory or run on another device (CLI: --device cpu)."
    )


def test_worker_threads_recover_too():
    plain, failing = _models(limit=32 * 64)
    data = _data(200)
    options = dict(seed=9, batch_size=32, k_chunk=256, progress=False)
    expected = log_weights(plain, data, 300, threads=1, **options)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = log_weights(failing, data, 300, threads=2, **options)
    assert torch.equal(got, expected)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
