"""Sharding across torchrun's processes: two CPU processes give bitwise the single-process result."""
import contextlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import evalkit
from evalkit.sampling import distributed
from evalkit.errors import InputError
from evalkit.models import IWAE

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def run_torchrun(args, cwd, timeout=300):
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*TORCHRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.parametrize("n,world_size", [(10, 2), (7, 3), (1, 4), (0, 2), (359, 2)])
def test_shards_are_contiguous_and_cover_the_data(n, world_size):
    ranges = [distributed.shard(n, rank, world_size) for rank in range(world_size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_without_torchrun_it_is_the_engine(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched_by_torchrun() and distributed.init() is None and distributed.rank() == 0
    torch.manual_seed(0)
    model = IWAE(12, [3], [[8, 8]])
    x = torch.bernoulli(torch.full((9, 12), 0.5))
    assert torch.equal(distributed.log_weights(model, x, 40, seed=3, progress=False),
                       evalkit.log_weights(model, x, 40, seed=3, progress=False))


SCRIPT = textwrap.dedent(
    """
    import torch
    from evalkit.sampling import distributed
    from evalkit.models import IWAE

    torch.manual_seed(0)
    model = IWAE(12, [5, 3], [[8, 8], [6, 6]])  # narrow layers: MKL rows depend on their position
    x = torch.bernoulli(torch.full((45, 12), 0.5), generator=torch.Generator().manual_seed(1))
    log_w = distributed.log_weights(model, x, 300, seed=7, progress=False)
    context = distributed.init()
    print(f"<rank {context.rank}: {log_w is not None}>", flush=True)
    if log_w is not None:
        torch.save(log_w, "two.pt")
    distributed.finish()
    """
)


def test_two_processes_give_bitwise_the_single_process_log_weights(tmp_path):
    (tmp_path / "job.py").write_text(SCRIPT)
    result = run_torchrun(["job.py"], cwd=tmp_path)
    assert "<rank 0: True>" in result.stdout and "<rank 1: False>" in result.stdout
    torch.manual_seed(0)
    model = IWAE(12, [5, 3], [[8, 8], [6, 6]])
    x = torch.bernoulli(torch.full((45, 12), 0.5), generator=torch.Generator().manual_seed(1))
    one = evalkit.log_weights(model, x, 300, seed=7, progress=False)
    two = torch.load(tmp_path / "two.pt")
    assert two.shape == (45, 300) and torch.equal(one, two)


def test_cli_under_torchrun_writes_once_and_equals_one_process(tmp_path):
    common = ["estimate", str(REPO / "examples" / "digits_iwae.pt"), "--data", "digits", "--binarize", "bernoulli",
              "-k", "200", "-e", "iwae", "-e", "jvi2", "--format", "json"]
    result = run_torchrun(["-m", "evalkit", *common, "-o", "two.json", "--per-example", "two.csv",
                           "--save-log-weights", "two.npy"], cwd=tmp_path)
    assert result.stdout.count("wrote") <= 1 and sorted(p.name for p in tmp_path.iterdir()) == [
        "two.csv", "two.json", "two.npy"]
    single = subprocess.run([sys.executable, "-m", "evalkit", *common, "-o", "one.json", "--per-example", "one.csv",
                             "--save-log-weights", "one.npy", "--quiet"], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert single.returncode == 0, single.stderr
    assert np.array_equal(np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy"))
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "two.csv").read_bytes()
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    for report in (one, two):
        report.get("metadata", {}).pop("elapsed_seconds", None), report.get("metadata", {}).pop("provenance", None)
    assert one == two


def test_sweep_cli_under_torchrun_writes_once_and_equals_one_process(tmp_path):
    common = ["sweep", str(REPO / "examples" / "digits_iwae.pt"), "--data", "digits", "--binarize", "bernoulli",
              "--ks", "1,10,100,400", "-e", "iwae", "-e", "jvi2", "--figures", "png", "--format", "csv"]
    result = run_torchrun(["-m", "evalkit", *common, "--out", "two"], cwd=tmp_path)
    assert result.stdout.count("estimator,k,") == 1  # only rank 0 prints the table
    single = subprocess.run([sys.executable, "-m", "evalkit", *common, "--out", "one", "--quiet"], cwd=tmp_path,
                            capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                            timeout=300)
    assert single.returncode == 0, single.stderr
    for name in ("sweep.csv", "fits.csv", "theory.csv", "weights.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_sweep_under_torchrun_refuses_indices(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    torch.manual_seed(0)
    model = IWAE(12, [5, 3], [[8, 8], [6, 6]])
    x = torch.bernoulli(torch.full((10, 12), 0.5), generator=torch.Generator().manual_seed(1))
    with pytest.raises(InputError, match="pass the rows you want as data"):
        evalkit.sweep(model, ks=[1, 10], data=x, indices=[0, 1, 2])


CACHED_JOB = textwrap.dedent(
    """
    import sys, time
    import torch
    import evalkit
    from evalkit.sampling import distributed
    from evalkit.sampling.cache import cached_log_weights
    from evalkit.models import IWAE


    class SlowIWAE(IWAE):  # slow enough that the test can kill the group between two shards
        def log_weights(self, x, noise):
            time.sleep(float(sys.argv[3]))
            return super().log_weights(x, noise)


    torch.manual_seed(0)
    model = SlowIWAE(12, [5, 3], [[8, 8], [6, 6]])
    x = torch.bernoulli(torch.full((40, 12), 0.5), generator=torch.Generator().manual_seed(1))
    if sys.argv[1] == "none":
        log_w = evalkit.log_weights(model, x, 100, seed=7, batch_size=5, progress=False)
    else:
        log_w = cached_log_weights(model, x, 100, cache_dir=sys.argv[1], seed=7, shard_size=5, batch_size=5,
                                   progress=False)
    if log_w is not None:
        torch.save(log_w, sys.argv[2])
    distributed.finish()
    """
)


def _descendants(pid):
    """Every process below ``pid`` (from /proc), children first."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


@pytest.mark.slow
def test_a_cache_under_torchrun_survives_kill_9_and_resumes_bitwise(tmp_path):
    import os
    import signal
    import time

    (tmp_path / "job.py").write_text(CACHED_JOB)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    cache = tmp_path / "c"
    group = subprocess.Popen([*TORCHRUN, "job.py", str(cache), "killed.pt", "0.3"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while not list(cache.glob("shard-*.sha256")):  # a shard is complete once its checksum is there
        assert group.poll() is None, group.communicate()
        assert time.monotonic() < deadline, "no shard after 240 s"
        time.sleep(0.005)
    # The whole torchrun group: the agent and both ranks (torchrun starts each rank in its own session).
    for pid in [group.pid, *_descendants(group.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    group.communicate(timeout=60)
    done = len(list(cache.glob("shard-*.sha256")))
    assert 1 <= done < 8, f"the kill came too late ({done} of 8 shards)"
    assert not (tmp_path / "killed.pt").exists()
    # Resumed under torchrun, then with one process (another world size): the same shards serve both.
    run_torchrun(["job.py", str(cache), "two.pt", "0"], cwd=tmp_path)
    for args in ((str(cache), "one_cached.pt"), ("none", "one.pt")):
        single = subprocess.run([sys.executable, "job.py", *args, "0"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        assert single.returncode == 0, single.stderr
    one = torch.load(tmp_path / "one.pt")
    assert one.shape == (40, 100)
    assert torch.equal(torch.load(tmp_path / "two.pt"), one)
    assert torch.equal(torch.load(tmp_path / "one_cached.pt"), one)
    assert json.loads((cache / "manifest.json").read_text())["shards"] == [[a, a + 5] for a in range(0, 40, 5)]


def test_cli_cache_under_torchrun_equals_one_process_and_resumes(tmp_path):
    common = ["estimate", str(REPO / "examples" / "digits_iwae.pt"), "--data", "digits", "--binarize", "bernoulli",
              "-k", "50", "-e", "iwae", "--format", "json"]
    run_torchrun(["-m", "evalkit", *common, "--cache", "c", "--cache-shard-size", "40", "-o", "two.json"],
                 cwd=tmp_path)
    (tmp_path / "c" / "shard-40-80.npy").unlink()  # a lost shard: recomputed by whichever rank owns it now
    single = subprocess.run([sys.executable, "-m", "evalkit", *common, "--cache", "c", "-o", "one.json", "--quiet"],
                            cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert single.returncode == 0, single.stderr
    plain = subprocess.run([sys.executable, "-m", "evalkit", *common, "-o", "plain.json", "--quiet"],
                           cwd=tmp_path, capture_output=True, text=True,
                           env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert plain.returncode == 0, plain.stderr
    one, two, uncached = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json", "plain.json"))
    assert one["estimates"] == two["estimates"] == uncached["estimates"]
