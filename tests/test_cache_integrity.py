"""A cache no other run can corrupt (issue #24 items 1-2): its lock, its key, its shards, its links.

* Lock: run 1 holds the cache; run 2 is refused "in use" and must leave the lock file and every
  file as they were; run 3 is refused as well while run 1 lives (today run 2 unlinked the lock
  and run 3 wrote the same cache beside run 1).
* Key: a glue model edited from ``log_std=`` to ``log_var=`` (same weights) is another cache: the
  resumed run is refused instead of printing the old number; the factory's module counts too.
* A fresh cache whose run fails (the model raises) is removed, as docs/errors.md says.
* Shards are bound to their cache: shards copied from a seed-1 cache are recomputed.
* A damaged shard that is a symbolic link is replaced by a regular file; the file it pointed to
  (outside the cache) is not touched.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from evalkit.errors import ResourceError
from evalkit.sampling import cache as cache_module
from evalkit.sampling.cache import CacheWarning, cached_log_weights

from test_cache import FakeEngine, TinyModel, reference

REPO = Path(__file__).resolve().parents[1]
ENV = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def data():
    return torch.arange(20 * 3, dtype=torch.float32).reshape(20, 3) / 60


@pytest.fixture
def engine(monkeypatch):
    fake = FakeEngine()
    monkeypatch.setattr(cache_module, "_engine_log_weights", fake)
    return fake


def _snapshot(directory: Path):
    """Every file of the directory: name -> (inode, bytes)."""
    return {p.name: (os.lstat(p).st_ino, p.read_bytes()) for p in sorted(directory.iterdir())}


# --- the lock -------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    from evalkit.sampling import cache as cache_module
    sys.path.insert(0, sys.argv[2])
    from test_cache import FakeEngine, TinyModel

    fake = FakeEngine()
    go = Path(sys.argv[1]).parent / "go"

    def slow(*args, **kwargs):  # run 1 holds the cache, nothing written yet, until the test says go
        if kwargs["indices"][0] == 0:
            print("holding", flush=True)
            while not go.exists():
                time.sleep(0.01)
        return fake(*args, **kwargs)

    cache_module._engine_log_weights = slow
    data = torch.arange(20 * 3, dtype=torch.float32).reshape(20, 3) / 60
    log_w = cache_module.cached_log_weights(TinyModel(), data, 4, cache_dir=sys.argv[1], seed=1, shard_size=10)
    torch.save(log_w, Path(sys.argv[1]).parent / "run1.pt")
    """
)


def test_a_refused_run_leaves_the_live_runs_lock_and_files_alone(tmp_path, engine, data):
    cache = tmp_path / "c"
    (tmp_path / "holder.py").write_text(HOLDER)
    run1 = subprocess.Popen([sys.executable, str(tmp_path / "holder.py"), str(cache), str(REPO / "tests")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert run1.stdout.readline() == "holding\n", run1.stderr.read()
        before = _snapshot(cache)
        assert list(before) == [".lock"]  # as in the issue: run 2 came before run 1's first shard
        for _ in ("run 2", "run 3"):  # the same inputs with another seed: today run 3 wrote beside run 1
            with pytest.raises(ResourceError, match="is in use by another evalkit run"):
                cached_log_weights(TinyModel(), data, 4, cache_dir=cache, seed=0, shard_size=10)
            assert _snapshot(cache) == before  # same lock file (inode), same shards, nothing new
        assert engine.calls == []
    finally:
        (tmp_path / "go").touch()
        _, err = run1.communicate(timeout=120)
    assert run1.returncode == 0, err
    assert torch.equal(torch.load(tmp_path / "run1.pt"), reference(TinyModel(), data, 4, seed=1))
    # Run 1 is gone, the kernel released its lock: the next run takes it and reuses every shard.
    assert torch.equal(cached_log_weights(TinyModel(), data, 4, cache_dir=cache, seed=1, shard_size=10),
                       reference(TinyModel(), data, 4, seed=1))
    assert engine.calls == []


def test_a_lock_file_unlinked_by_its_holder_is_not_trusted(tmp_path):
    # The holder of the lock may unlink it (a run leaving nothing behind); a run that opened the
    # old file meanwhile must not believe it holds the cache.
    from evalkit.sampling import cache_store

    first = cache_store._acquire_lock(tmp_path)
    stale = os.open(tmp_path / ".lock", os.O_RDWR)
    first.release(remove=True)
    second = cache_store._acquire_lock(tmp_path)  # makes and locks a new file, not the unlinked one
    assert os.fstat(second.fd).st_ino == os.stat(tmp_path / ".lock").st_ino != os.fstat(stale).st_ino
    with pytest.raises(ResourceError):
        cache_store._acquire_lock(tmp_path)
    second.release()
    os.close(stale)


# --- the key: the model's code --------------------------------------------------------------

GLUE = textwrap.dedent(
    """
    import torch
    from torch.distributions import Independent, Normal
    from evalkit.models import EncoderDecoderModel, diagonal_normal


    class Glue(EncoderDecoderModel):
        def __init__(self):
            super().__init__()
            self.noise_shape, self.data_dim, self.requires_binary_data = (1,), 3, False
            self.w = torch.nn.Parameter(torch.linspace(0.5, 1.5, 3))
            self.encoder = torch.nn.Linear(3, 2)

        def proposal(self, x):
            loc, s = self.encoder(x).chunk(2, dim=-1)
            return diagonal_normal(loc, log_std=s)

        def prior(self):
            zeros = torch.zeros(1, dtype=self.w.dtype)
            return Independent(Normal(zeros, torch.ones_like(zeros)), 1)

        def likelihood(self, z):
            return Independent(Normal(z * self.w, torch.ones_like(z * self.w)), 1)


    def build():
        return Glue()
    """
)


def _estimate(tmp_path, *extra):
    args = [sys.executable, "-m", "evalkit", "estimate", "glue.pt", "--model", "glue_vc:build", "--data", "x.npy",
            "-k", "64", "-e", "iwae", "--format", "json", "--quiet", *extra]
    return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=300)


def _iwae(stdout):
    return json.loads(stdout)["estimates"][0]["estimate"]


@pytest.mark.slow
def test_an_edited_glue_model_is_another_cache(tmp_path):
    (tmp_path / "glue_vc.py").write_text(GLUE)
    torch.manual_seed(0)
    sys.path.insert(0, str(tmp_path))
    try:
        import glue_vc
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("glue_vc", None)
    model = glue_vc.Glue()
    with torch.no_grad():
        model.encoder.bias.fill_(-1.0)
    torch.save(model.state_dict(), tmp_path / "glue.pt")
    np.save(tmp_path / "x.npy", torch.randn(40, 3, generator=torch.Generator().manual_seed(2)).numpy())
    first = _estimate(tmp_path, "--cache", "vc", "--cache-shard-size", "5")
    assert first.returncode == 0, first.stderr
    (tmp_path / "glue_vc.py").write_text(GLUE.replace("log_std=s", "log_var=s"))  # same weights, other code
    uncached = _estimate(tmp_path)
    assert uncached.returncode == 0, uncached.stderr
    assert _iwae(uncached.stdout) != pytest.approx(_iwae(first.stdout), abs=1e-3)
    resumed = _estimate(tmp_path, "--cache", "vc")
    assert resumed.returncode == 1 and resumed.stdout == "", resumed.stdout
    assert "was made for a different model code; use another --cache directory or delete it" in resumed.stderr
    assert len(resumed.stderr.strip().splitlines()) == 1


def test_the_factory_module_is_part_of_the_code(tmp_path, monkeypatch):
    from evalkit.models import MLPVAE
    from evalkit.models.checkpoints import FACTORY_MODULE_ATTRIBUTE
    from evalkit.sampling.fingerprint import code_digest

    (tmp_path / "factory_a.py").write_text("SCALE = 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import factory_a  # noqa: F401  (the digest reads the source of an imported module)

    model = MLPVAE(6, 2, (5,))
    plain = code_digest(model)
    object.__setattr__(model, FACTORY_MODULE_ATTRIBUTE, "factory_a")
    built = code_digest(model)
    (tmp_path / "factory_a.py").write_text("SCALE = 2.0\n")
    assert len({plain, built, code_digest(model)}) == 3
    sys.modules.pop("factory_a", None)


# --- a failed run ---------------------------------------------------------------------------

def test_a_fresh_cache_whose_model_raises_mid_run_is_removed(tmp_path, monkeypatch, data):
    monkeypatch.setattr(cache_module, "_engine_log_weights", FakeEngine(fail_at_row=12))
    cache = tmp_path / "c"
    with pytest.raises(RuntimeError, match="simulated failure"):
        cached_log_weights(TinyModel(), data, 3, cache_dir=cache, shard_size=4)  # shards 0-4, 4-8, 8-12 written
    assert not cache.exists()


def test_a_resumed_cache_keeps_its_shards_when_the_model_raises(tmp_path, monkeypatch, data):
    monkeypatch.setattr(cache_module, "_engine_log_weights", FakeEngine())
    cached_log_weights(TinyModel(), data, 3, cache_dir=tmp_path, shard_size=4)
    (tmp_path / "shard-16-20.npy").unlink()
    kept = _snapshot(tmp_path)
    monkeypatch.setattr(cache_module, "_engine_log_weights", FakeEngine(fail_at_row=16))
    with pytest.raises(RuntimeError):
        cached_log_weights(TinyModel(), data, 3, cache_dir=tmp_path, shard_size=4)
    assert _snapshot(tmp_path) == kept  # the shards of the run that made the cache stay


# --- shards bound to their cache ------------------------------------------------------------

def test_shards_copied_from_another_seeds_cache_are_recomputed(tmp_path, engine, data):
    seed0, seed1 = tmp_path / "seed0", tmp_path / "seed1"
    cached_log_weights(TinyModel(), data, 5, cache_dir=seed0, seed=0, shard_size=10)
    cached_log_weights(TinyModel(), data, 5, cache_dir=seed1, seed=1, shard_size=10)
    for suffix in ("npy", "sha256"):
        (seed0 / f"shard-0-10.{suffix}").write_bytes((seed1 / f"shard-0-10.{suffix}").read_bytes())
    engine.calls.clear()
    with pytest.warns(CacheWarning, match="not bound to this cache"):
        log_w = cached_log_weights(TinyModel(), data, 5, cache_dir=seed0, seed=0, shard_size=10)
    assert engine.calls == [(0, 10)]
    assert torch.equal(log_w, reference(TinyModel(), data, 5, seed=0))


# --- links ----------------------------------------------------------------------------------

def test_a_damaged_shard_that_is_a_link_is_replaced_not_written_through(tmp_path, engine, data):
    cache, outside = tmp_path / "c", tmp_path / "precious.npy"
    cached_log_weights(TinyModel(), data, 5, cache_dir=cache, shard_size=10)
    outside.write_bytes(b"\x93NUMPY someone else's file")
    (cache / "shard-0-10.npy").unlink()
    (cache / "shard-0-10.npy").symlink_to(outside)
    with pytest.warns(CacheWarning, match="symbolic link"):
        log_w = cached_log_weights(TinyModel(), data, 5, cache_dir=cache, shard_size=10)
    assert outside.read_bytes() == b"\x93NUMPY someone else's file"
    assert not (cache / "shard-0-10.npy").is_symlink() and (cache / "shard-0-10.npy").is_file()
    assert torch.equal(log_w, reference(TinyModel(), data, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(cached_log_weights(TinyModel(), data, 5, cache_dir=cache), log_w)


def test_a_lock_file_that_is_a_link_is_refused(tmp_path, engine, data):
    cache, outside = tmp_path / "c", tmp_path / "elsewhere"
    cache.mkdir()
    (cache / ".lock").symlink_to(outside)
    with pytest.raises(Exception, match="cannot write the lock file"):
        cached_log_weights(TinyModel(), data, 5, cache_dir=cache)
    assert not outside.exists()
