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

from evalkit.sampling import cache as cache_module
from evalkit.sampling.cache import CacheWarning, cached_log_weights
from evalkit.sampling.engine import log_weights
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
    with pytest.raises(InputError, match="was made for a different checkpoint(/model code)?;"):
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


# --- the CLI in real processes: SIGKILL mid-run, resume, compare bit for bit -----------------

SHARD = 8
N_CLI = 96


def _cli(args, cwd, **popen):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "evalkit", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def _estimate_args(cache, tag):
    return ["estimate", "model.pt", "--data", "data.npy", "-k", "3000", "--seed", "3", "--cache", cache,
            "--cache-shard-size", str(SHARD), "--format", "json", "-o", f"summary_{tag}.json",
            "--per-example", f"per_example_{tag}.csv", "--save-log-weights", f"log_w_{tag}.npy"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A checkpoint, data and one uninterrupted `evalkit estimate --cache` run (the reference)."""
    import evalkit

    d = tmp_path_factory.mktemp("cli_cache")
    torch.manual_seed(0)
    evalkit.save_model(MLPVAE(64, 8, (256, 256)), d / "model.pt")
    rng = np.random.default_rng(0)
    np.save(d / "data.npy", (rng.random((N_CLI, 64)) < 0.3).astype(np.float32))
    proc = _cli(_estimate_args("cache_full", "full"), d)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return d


def _fingerprint(cache):
    return json.loads((cache / "manifest.json").read_text())["fingerprint"]


def _shards(cache):
    return sorted(p.name for p in cache.glob("shard-*.npy"))


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bitwise_identical(cli_run):
    d = cli_run
    cache = d / "cache_killed"
    proc = _cli(_estimate_args("cache_killed", "resumed"), d)
    deadline = time.monotonic() + 300
    while not list(cache.glob("shard-*.sha256")):  # at least one shard complete (its checksum is written last)
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no shard after 300 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = _shards(cache)
    total = N_CLI // SHARD
    assert 1 <= len(done) < total, f"the kill came too late ({len(done)} of {total} shards)"
    # Killed before the end: no output file exists, and every stored shard is whole.
    for tag_file in ("summary_resumed.json", "per_example_resumed.csv", "log_w_resumed.npy"):
        assert not (d / tag_file).exists()
    for name in done:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a damaged shard would warn
            start, stop = map(int, name[len("shard-"):-len(".npy")].split("-"))
            assert cache_module._load_shard(cache, start, stop, 3000, _fingerprint(cache)) is not None

    resumed = _cli(_estimate_args("cache_killed", "resumed"), d)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert f"resuming from cache cache_killed: {len(done)} of {total} shards already computed" in err
    assert _warnings_besides_the_weights(err) == []
    assert len(_shards(cache)) == total and not list(cache.glob(".*.tmp"))

    full = d / "log_w_full.npy"
    assert (d / "log_w_resumed.npy").read_bytes() == full.read_bytes()
    assert (d / "per_example_resumed.csv").read_bytes() == (d / "per_example_full.csv").read_bytes()
    summary = [json.loads((d / f"summary_{tag}.json").read_text()) for tag in ("full", "resumed")]
    assert summary[0]["estimates"] == summary[1]["estimates"]
    assert summary[0]["diagnostics"] == summary[1]["diagnostics"]
    # ... and the cache holds the same bits as the uninterrupted run's cache, shard by shard.
    for name in _shards(cache):
        assert (cache / name).read_bytes() == (d / "cache_full" / name).read_bytes()


@pytest.mark.slow
def test_truncated_shard_is_detected_and_recomputed_by_the_cli(cli_run, tmp_path):
    import shutil

    d = cli_run
    cache = tmp_path / "cache"
    shutil.copytree(d / "cache_full", cache)
    victim = cache / "shard-16-24.npy"
    victim.write_bytes(victim.read_bytes()[:1000])
    args = _estimate_args(str(cache), "repaired")
    args[args.index("--save-log-weights") + 1] = str(tmp_path / "log_w.npy")
    for option in ("-o", "--per-example"):
        args[args.index(option) + 1] = str(tmp_path / args[args.index(option) + 1])
    proc = _cli(args, d)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert (f"warning: cache shard {str(victim)!r} is damaged (its checksum does not match (truncated or "
            "corrupted)); recomputing it") in err.splitlines()
    assert len(_warnings_besides_the_weights(err)) == 1
    assert (tmp_path / "log_w.npy").read_bytes() == (d / "log_w_full.npy").read_bytes()
    assert victim.read_bytes() == (d / "cache_full" / "shard-16-24.npy").read_bytes()


@pytest.mark.slow
def test_cli_refuses_a_cache_from_another_seed(cli_run, tmp_path):
    d = cli_run
    args = _estimate_args("cache_full", "other")
    args[args.index("--seed") + 1] = "4"
    proc = _cli(args, d)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1
    assert err == ("Error: cache directory 'cache_full' was made for a different seed (cached seed=3; now seed=4); "
                   "use another --cache directory or delete it\n")
    assert not (d / "summary_other.json").exists()


def _warnings_besides_the_weights(err: str) -> list:
    """stderr's warning lines other than the PSIS k-hat one, which this untrained model earns
    (README, "Weight warnings") and which says nothing about the cache."""
    return [line for line in err.splitlines() if "warning" in line.lower() and "k-hat" not in line]
