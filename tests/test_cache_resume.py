"""The cache with the real engine: resumed runs equal uninterrupted ones bit for bit.

The CLI test kills ``evalkit estimate --cache`` with SIGKILL after at least one shard exists,
runs the same command again and compares with an uninterrupted run, byte for byte.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

from evalkit import cache as cache_module
from evalkit.cache import CacheWarning, cached_log_weights
from evalkit.engine import log_weights
from evalkit.errors import InputError
from evalkit.models import MLPVAE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_vae(seed=0, **kwargs):
    torch.manual_seed(seed)
    return MLPVAE(6, 2, (5,), **kwargs)


@pytest.fixture(scope="module")
def binary_data():
    g = torch.Generator().manual_seed(1)
    return (torch.rand(37, 6, generator=g) < 0.4).float()


def test_cached_equals_engine_bitwise_and_resume_with_other_batching(tmp_path, binary_data):
    model = tiny_vae()
    expected = log_weights(model, binary_data, 300, seed=5, progress=False)
    first = cached_log_weights(model, binary_data, 300, cache_dir=tmp_path, seed=5, shard_size=10,
                               batch_size=7, k_chunk=64, progress=False)
    assert torch.equal(first, expected)
    # Lose two shards, resume with other engine options: only those two are computed again.
    (tmp_path / "shard-10-20.npy").unlink()
    (tmp_path / "shard-30-37.sha256").unlink()
    with pytest.warns(CacheWarning, match="shard-30-37.npy' is damaged"):
        resumed = cached_log_weights(model, binary_data, 300, cache_dir=tmp_path, seed=5, batch_size=64,
                                     k_chunk=300, progress=False)
    assert torch.equal(resumed, expected)


def test_model_config_and_compute_dtype_are_part_of_the_fingerprint(tmp_path, binary_data):
    tanh = tiny_vae(activation="tanh")
    relu = tiny_vae(activation="relu")
    assert [t.shape for t in tanh.state_dict().values()] == [t.shape for t in relu.state_dict().values()]
    assert cache_module.model_digest(tanh) != cache_module.model_digest(relu)
    cached_log_weights(tanh, binary_data, 4, cache_dir=tmp_path, progress=False)
    with pytest.raises(InputError, match="was made for a different checkpoint;"):
        cached_log_weights(relu, binary_data, 4, cache_dir=tmp_path, progress=False)
    with pytest.raises(InputError, match=r"different dtype \(cached dtype='float32'; now dtype='float64'\)"):
        cached_log_weights(tanh, binary_data, 4, cache_dir=tmp_path, dtype=torch.float64, progress=False)


def test_bad_log_weights_never_reach_the_cache(tmp_path, binary_data):
    model = tiny_vae()
    with torch.no_grad():
        model.decoder_loc.bias[0] = float("nan")
    with pytest.raises(InputError, match=r"returned NaN log-weights for datapoints with dataset indices \[0, 1, 2, 3, 4\]"):
        cached_log_weights(model, binary_data, 4, cache_dir=tmp_path / "c", shard_size=10, progress=False)
    assert not (tmp_path / "c").exists()


def test_a_killed_library_run_resumes_bitwise(tmp_path, binary_data, monkeypatch):
    model = tiny_vae()
    expected = log_weights(model, binary_data, 50, seed=2, progress=False)
    real = cache_module._engine_log_weights
    calls = []

    def dies_on_third_shard(*args, **kwargs):
        calls.append(int(kwargs["indices"][0]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_module, "_engine_log_weights", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        cached_log_weights(model, binary_data, 50, cache_dir=tmp_path, seed=2, shard_size=8, progress=False)
    assert sorted(p.name for p in tmp_path.glob("shard-*.npy")) == ["shard-0-8.npy", "shard-8-16.npy"]
    monkeypatch.setattr(cache_module, "_engine_log_weights", real)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed = cached_log_weights(model, binary_data, 50, cache_dir=tmp_path, seed=2, shard_size=8, progress=False)
    assert torch.equal(resumed, expected)
