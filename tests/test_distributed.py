"""Sharding across torchrun's processes: two CPU processes give bitwise the single-process result."""
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


def test_a_cache_under_torchrun_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="cache cannot be shared by torchrun's processes"):
        evalkit.estimate(REPO / "examples" / "digits_iwae.pt", "digits", k=10, binarize="bernoulli",
                         cache=tmp_path / "cache", progress=False)


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
        report.get("metadata", {}).pop("elapsed_seconds", None)
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


def test_sweep_under_torchrun_refuses_a_cache_and_indices(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    torch.manual_seed(0)
    model = IWAE(12, [5, 3], [[8, 8], [6, 6]])
    x = torch.bernoulli(torch.full((10, 12), 0.5), generator=torch.Generator().manual_seed(1))
    with pytest.raises(InputError, match="cache cannot be shared by torchrun's processes"):
        evalkit.sweep(model, ks=[1, 10], data=x, cache=tmp_path / "c")
    with pytest.raises(InputError, match="pass the rows you want as data"):
        evalkit.sweep(model, ks=[1, 10], data=x, indices=[0, 1, 2])
