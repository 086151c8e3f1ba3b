"""The resumable log-weight cache (evalkit/cache.py), with a fake engine.

The fake engine draws each datapoint's log-weights from a generator seeded by (seed, index),
as the real engine does, and counts which rows it was asked for, so that the tests can say
exactly which shards were recomputed. End-to-end tests with the real engine and the CLI are
in tests/test_cache_resume.py.
"""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

from evalkit.sampling import cache as cache_module
from evalkit.sampling.cache import CacheWarning, cached_log_weights, default_shard_size, shard_ranges
from evalkit.errors import DataError, InputError, OutputError, ResourceError


class TinyModel(torch.nn.Module):
    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        with torch.no_grad():
            self.linear.weight.fill_(scale)
            self.linear.bias.zero_()


class FakeEngine:
    """Stands in for evalkit.sampling.engine.log_weights; records the rows of every call."""

    def __init__(self, fail_at_row=None, exception=RuntimeError):
        self.calls = []
        self.fail_at_row = fail_at_row
        self.exception = exception

    def __call__(self, model, data, k, *, seed=0, indices=None, **options):
        indices = torch.as_tensor(indices)
        if self.fail_at_row is not None and int(self.fail_at_row) in indices.tolist():
            raise self.exception("simulated failure")
        self.calls.append((int(indices[0]), int(indices[-1]) + 1))
        rows = []
        weight = float(model.linear.weight.detach().sum())
        for row, index in zip(data, indices.tolist()):
            g = torch.Generator().manual_seed(1_000_003 * seed + index)
            rows.append(torch.randn(k, generator=g, dtype=torch.float64) + weight * float(row.sum()))
        return torch.stack(rows)


@pytest.fixture
def engine(monkeypatch):
    fake = FakeEngine()
    monkeypatch.setattr(cache_module, "_engine_log_weights", fake)
    return fake


@pytest.fixture
def data():
    return torch.arange(20 * 3, dtype=torch.float32).reshape(20, 3) / 60


def reference(model, data, k, seed=0):
    return FakeEngine()(model, data, k, seed=seed, indices=torch.arange(len(data)))


def test_fresh_run_matches_the_engine_and_writes_manifest_and_shards(tmp_path, engine, data):
    model = TinyModel()
    cache = tmp_path / "cache"
    log_w = cached_log_weights(model, data, 7, cache_dir=cache, seed=3, shard_size=6)
    assert log_w.dtype == torch.float64 and log_w.shape == (20, 7)
    assert torch.equal(log_w, reference(model, data, 7, seed=3))
    assert engine.calls == [(0, 6), (6, 12), (12, 18), (18, 20)]
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["n"] == 20 and manifest["k"] == 7
    assert manifest["shards"] == [[0, 6], [6, 12], [12, 18], [18, 20]]
    assert manifest["components"]["seed"] == 3 and manifest["components"]["k"] == 7
    names = sorted(p.name for p in cache.iterdir())
    assert names == sorted(
        [".lock", "manifest.json"]
        + [f"shard-{a}-{b}.{ext}" for a, b in [(0, 6), (6, 12), (12, 18), (18, 20)] for ext in ("npy", "sha256")]
    )
    # The checksum file's first line is in `sha256sum -c` format; the second binds it to the cache.
    first, second = (cache / "shard-0-6.sha256").read_text().splitlines()
    assert first.endswith("  shard-0-6.npy") and second.startswith("key ")
    assert np.array_equal(np.load(cache / "shard-6-12.npy"), log_w[6:12].numpy())


def test_second_run_computes_nothing_and_returns_the_same_bits(tmp_path, engine, data):
    model = TinyModel()
    first = cached_log_weights(model, data, 5, cache_dir=tmp_path, shard_size=8)
    engine.calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = cached_log_weights(model, data, 5, cache_dir=tmp_path, shard_size=8)
    assert engine.calls == []
    assert torch.equal(first, second)


def test_interrupted_run_resumes_where_it_stopped(tmp_path, monkeypatch, data):
    model = TinyModel()
    dying = FakeEngine(fail_at_row=12, exception=KeyboardInterrupt)
    monkeypatch.setattr(cache_module, "_engine_log_weights", dying)
    with pytest.raises(KeyboardInterrupt):
        cached_log_weights(model, data, 4, cache_dir=tmp_path, shard_size=4)
    assert dying.calls == [(0, 4), (4, 8), (8, 12)]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    resumed = FakeEngine()
    monkeypatch.setattr(cache_module, "_engine_log_weights", resumed)
    log_w = cached_log_weights(model, data, 4, cache_dir=tmp_path, shard_size=4)
    assert resumed.calls == [(12, 16), (16, 20)]
    assert torch.equal(log_w, reference(model, data, 4))


def test_resume_keeps_the_cache_shards_whatever_shard_size_and_engine_options(tmp_path, engine, data):
    model = TinyModel()
    cached_log_weights(model, data, 4, cache_dir=tmp_path, shard_size=5)
    (tmp_path / "shard-5-10.npy").unlink()
    engine.calls.clear()
    log_w = cached_log_weights(model, data, 4, cache_dir=tmp_path, shard_size=3, batch_size=2, k_chunk=1)
    assert engine.calls == [(5, 10)]
    assert torch.equal(log_w, reference(model, data, 4))


@pytest.mark.parametrize(
    "damage",
    ["truncate", "flip_byte", "empty", "drop_checksum", "wrong_shape"],
)
def test_damaged_shard_is_detected_and_recomputed_with_one_warning(tmp_path, engine, data, damage):
    model = TinyModel()
    expected = cached_log_weights(model, data, 6, cache_dir=tmp_path, shard_size=5)
    shard = tmp_path / "shard-10-15.npy"
    payload = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(payload[: len(payload) // 2])
    elif damage == "flip_byte":
        shard.write_bytes(payload[:-3] + bytes([payload[-3] ^ 0x01]) + payload[-2:])
    elif damage == "empty":
        shard.write_bytes(b"")
    elif damage == "drop_checksum":
        (tmp_path / "shard-10-15.sha256").unlink()
    elif damage == "wrong_shape":
        # A well-formed file with a matching checksum but the wrong content (a copied shard).
        import hashlib
        import io

        buf = io.BytesIO()
        np.save(buf, np.zeros((4, 6)))
        shard.write_bytes(buf.getvalue())
        (tmp_path / "shard-10-15.sha256").write_text(hashlib.sha256(buf.getvalue()).hexdigest() + "  shard-10-15.npy\n")
    engine.calls.clear()
    with pytest.warns(CacheWarning) as record:
        log_w = cached_log_weights(model, data, 6, cache_dir=tmp_path, shard_size=5)
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith(f"cache shard {str(shard)!r} is damaged (")
    assert message.endswith("); recomputing it")
    assert engine.calls == [(10, 15)]
    assert torch.equal(log_w, expected)
    # Repaired on disk: a third run is silent and computes nothing.
    engine.calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached_log_weights(model, data, 6, cache_dir=tmp_path, shard_size=5)
    assert engine.calls == []


def test_truncated_shard_message_names_the_checksum(tmp_path, engine, data):
    model = TinyModel()
    cached_log_weights(model, data, 3, cache_dir=tmp_path, shard_size=10)
    shard = tmp_path / "shard-0-10.npy"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.warns(CacheWarning, match=r"checksum does not match \(truncated or corrupted\)"):
        cached_log_weights(model, data, 3, cache_dir=tmp_path, shard_size=10)


@pytest.mark.parametrize(
    "change, words",
    [
        ("model", "made for a different checkpoint;"),
        ("data", "made for a different data;"),
        ("k", "made for a different k (cached k=4; now k=5);"),
        ("seed", "made for a different seed (cached seed=0; now seed=1);"),
        ("dtype", "made for a different dtype (cached dtype='float32'; now dtype='float64');"),
        ("k+seed", "made for a different k/seed (cached k=4, seed=0; now k=5, seed=1);"),
    ],
)
def test_cache_for_other_inputs_is_refused_not_mixed(tmp_path, engine, data, change, words):
    model = TinyModel()
    cached_log_weights(model, data, 4, cache_dir=tmp_path, shard_size=5)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    kwargs = dict(k=4, seed=0)
    other_model, other_data = model, data
    if change == "model":
        other_model = TinyModel(scale=1.0000001)
    elif change == "data":
        other_data = data.clone()
        other_data[19, 2] += 1e-3
    elif change == "k":
        kwargs["k"] = 5
    elif change == "seed":
        kwargs["seed"] = 1
    elif change == "dtype":
        kwargs["dtype"] = torch.float64
    elif change == "k+seed":
        kwargs.update(k=5, seed=1)
    engine.calls.clear()
    k = kwargs.pop("k")
    with pytest.raises(InputError) as info:
        cached_log_weights(other_model, other_data, k, cache_dir=tmp_path, **kwargs)
    assert str(info.value) == (
        f"cache directory {str(tmp_path)!r} was {words} use another --cache directory or delete it"
    )
    assert engine.calls == []
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_model_fingerprint_sees_buffers_dtype_and_class(data):
    base = TinyModel()
    digest = cache_module.model_digest(base)
    assert cache_module.model_digest(TinyModel()) == digest
    with_buffer = TinyModel()
    with_buffer.register_buffer("temperature", torch.tensor(2.0), persistent=False)
    assert cache_module.model_digest(with_buffer) != digest
    assert cache_module.model_digest(TinyModel().double()) != digest

    class Renamed(TinyModel):
        pass

    assert cache_module.model_digest(Renamed()) != digest


def test_non_empty_directory_without_manifest_is_refused(tmp_path, engine, data):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError) as info:
        cached_log_weights(TinyModel(), data, 3, cache_dir=tmp_path)
    assert str(info.value) == (
        f"cache directory {str(tmp_path)!r} is not empty (notes.txt) and has no manifest.json; "
        "give an empty or new directory for --cache"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_unreadable_manifest_is_an_error(tmp_path, engine, data):
    cached_log_weights(TinyModel(), data, 3, cache_dir=tmp_path, shard_size=10)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match=r"manifest\.json' cannot be read \(JSONDecodeError\); delete the cache"):
        cached_log_weights(TinyModel(), data, 3, cache_dir=tmp_path)


def test_cache_path_that_is_a_file_is_refused(tmp_path, engine, data):
    target = tmp_path / "cache"
    target.write_text("")
    with pytest.raises(OutputError, match=r"is a file, not a directory; give a directory for --cache$"):
        cached_log_weights(TinyModel(), data, 3, cache_dir=target)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_cache_directory_is_refused(tmp_path, engine, data):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match=r"is not writable; choose another --cache directory$"):
            cached_log_weights(TinyModel(), data, 3, cache_dir=locked)
    finally:
        locked.chmod(0o700)


def test_cache_directory_that_cannot_be_created_is_refused(tmp_path, engine, data):
    parent = tmp_path / "file"
    parent.write_text("")
    with pytest.raises(OutputError, match=r"^cannot create cache directory .* choose another --cache directory$"):
        cached_log_weights(TinyModel(), data, 3, cache_dir=parent / "cache")


@pytest.mark.skipif(os.name != "posix", reason="flock is POSIX")
def test_directory_in_use_by_another_run_is_refused(tmp_path, engine, data):
    import fcntl

    cached_log_weights(TinyModel(), data, 3, cache_dir=tmp_path, shard_size=10)
    fd = os.open(tmp_path / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(ResourceError, match=r"is in use by another evalkit run; wait for it to finish"):
            cached_log_weights(TinyModel(), data, 3, cache_dir=tmp_path)
    finally:
        os.close(fd)


def test_failed_first_shard_leaves_no_directory_behind(tmp_path, monkeypatch, data):
    monkeypatch.setattr(cache_module, "_engine_log_weights", FakeEngine(fail_at_row=0))
    target = tmp_path / "new" / "cache"
    with pytest.raises(RuntimeError, match="simulated failure"):
        cached_log_weights(TinyModel(), data, 3, cache_dir=target)
    assert not target.exists()


def test_failure_in_an_existing_empty_directory_leaves_it_empty(tmp_path, monkeypatch, data):
    monkeypatch.setattr(cache_module, "_engine_log_weights", FakeEngine(fail_at_row=0))
    with pytest.raises(RuntimeError):
        cached_log_weights(TinyModel(), data, 3, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_files_of_a_killed_run_are_removed(tmp_path, engine, data):
    cached_log_weights(TinyModel(), data, 3, cache_dir=tmp_path, shard_size=10)
    (tmp_path / "shard-10-20.npy").unlink()
    stale = tmp_path / ".shard-10-20.npy.k3j2x1.tmp"
    stale.write_bytes(b"\x93NUMPY half")
    cached_log_weights(TinyModel(), data, 3, cache_dir=tmp_path, shard_size=10)
    assert not stale.exists()


def test_bad_arguments(tmp_path, engine, data):
    with pytest.raises(InputError, match="k must be a positive integer"):
        cached_log_weights(TinyModel(), data, 0, cache_dir=tmp_path)
    with pytest.raises(InputError, match="shard_size must be a positive number of datapoints, got 0"):
        cached_log_weights(TinyModel(), data, 3, cache_dir=tmp_path, shard_size=0)
    with pytest.raises(InputError, match="the cache covers the whole dataset"):
        cached_log_weights(TinyModel(), data, 3, cache_dir=tmp_path, indices=torch.arange(20))
    with pytest.raises(DataError, match=r"^the dataset is empty \(0 datapoints\)"):
        cached_log_weights(TinyModel(), data[:0], 3, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("n, k", [(1, 1), (7, 3), (100, 5000), (10_000, 5000), (10**6, 1)])
def test_default_shards_cover_the_data_in_bounded_pieces(n, k):
    size = default_shard_size(n, k)
    ranges = shard_ranges(n, size)
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a < b and b - a <= size for a, b in ranges)
    assert all(prev[1] == nxt[0] for prev, nxt in zip(ranges, ranges[1:]))
    assert size * k <= max(k, cache_module.DEFAULT_SHARD_VALUES)
    assert len(ranges) >= min(n, cache_module.DEFAULT_MIN_SHARDS)


def test_bad_input_found_mid_run_leaves_no_new_cache_behind(tmp_path, monkeypatch, data):
    # NaN log-weights at datapoint 12 (say): the finished shards are useless, since fixing the
    # model or the data changes the fingerprint; a bad input leaves no output, cache included.
    monkeypatch.setattr(cache_module, "_engine_log_weights", FakeEngine(fail_at_row=12, exception=InputError))
    target = tmp_path / "cache"
    with pytest.raises(InputError, match="simulated failure"):
        cached_log_weights(TinyModel(), data, 3, cache_dir=target, shard_size=4)
    assert not target.exists()


def test_bad_input_while_resuming_keeps_the_shards_of_earlier_runs(tmp_path, monkeypatch, data):
    monkeypatch.setattr(cache_module, "_engine_log_weights", FakeEngine(fail_at_row=12, exception=KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        cached_log_weights(TinyModel(), data, 3, cache_dir=tmp_path, shard_size=4)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert "shard-8-12.npy" in kept
    monkeypatch.setattr(cache_module, "_engine_log_weights", FakeEngine(fail_at_row=16, exception=InputError))
    with pytest.raises(InputError):
        cached_log_weights(TinyModel(), data, 3, cache_dir=tmp_path, shard_size=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["shard-12-16.npy", "shard-12-16.sha256"])


def test_refused_directory_is_left_untouched(tmp_path, engine, data):
    (tmp_path / "notes.txt").write_text("mine")
    before = tmp_path.stat().st_mtime_ns
    with pytest.raises(InputError, match="has no manifest.json"):
        cached_log_weights(TinyModel(), data, 3, cache_dir=tmp_path)
    assert tmp_path.stat().st_mtime_ns == before


def test_compile_setting_is_part_of_the_fingerprint_and_tf32_only_on_cuda(tmp_path, engine, data):
    cached_log_weights(TinyModel(), data, 3, cache_dir=tmp_path, shard_size=10)
    with pytest.raises(InputError, match=r"different compile setting \(cached compile=False; now compile=True\)"):
        cached_log_weights(TinyModel(), data, 3, cache_dir=tmp_path, compile=True)
    engine.calls.clear()
    cached_log_weights(TinyModel(), data, 3, cache_dir=tmp_path, tf32=True, device="cpu")  # no effect on CPU
    assert engine.calls == []
