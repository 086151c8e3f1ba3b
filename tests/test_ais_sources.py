"""Annealed importance sampling through estimate, sweep, the cache, torchrun and the CLI."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import evalkit
from evalkit_cli.main import main
from evalkit.errors import InputError
from evalkit.estimators import iwae, jvi
from evalkit.models import LinearGaussianModel
from evalkit.sampling.ais import ais_run

REPO = Path(__file__).resolve().parents[1]
AIS = {"steps": 30, "leapfrog": 2}


@pytest.fixture(scope="module")
def gaussian():
    """A linear-Gaussian model whose proposal is not its posterior, and data from it."""
    model = LinearGaussianModel.random(6, 2, seed=1)
    weight, bias, scale_tril = model.exact_posterior_params()
    model = model.with_proposal(weight * 0.5, bias + 0.3, scale_tril * 1.5)
    torch.manual_seed(0)
    x = model.likelihood(model.prior().sample((40, 1))).sample().squeeze(1)
    return model, x


def test_estimate_by_ais_is_iwae_over_the_chains_of_ais_run(gaussian):
    model, x = gaussian
    direct = ais_run(model, x, chains=6, seed=4, dtype=torch.float64, **AIS).log_weights
    # Computed and reduced 7 datapoints at a time: every row bitwise that of the whole run.
    result = evalkit.estimate(model, x, k=6, seed=4, method="ais", ais=AIS, estimators=["iwae", "jvi1"],
                              block_size=7, dtype=torch.float64, progress=False)
    assert np.array_equal(result.per_example["iwae"].to_numpy(), iwae(direct).numpy())
    assert np.array_equal(result.per_example["jvi1"].to_numpy(), jvi(direct, 1).numpy())
    summary = result.summary.set_index("estimator")
    assert summary.loc["iwae", "estimate"] == pytest.approx(float(iwae(direct).mean()), rel=1e-14)
    kept = evalkit.estimate(model, x, k=6, seed=4, method="ais", ais=AIS, estimators=["iwae"], keep_log_weights=True,
                            dtype=torch.float64, progress=False)
    assert torch.equal(kept.log_weights, direct)
    sampler = result.metadata["sampler"]
    assert sampler["method"] == "ais" and sampler["steps"] == 30 and 0 < sampler["mean_acceptance_rate"] <= 1


def test_ais_estimate_reaches_the_exact_marginal_where_importance_sampling_is_biased(gaussian):
    model, x = gaussian
    exact = float(model.log_marginal(x).mean())
    ais = evalkit.estimate(model, x, k=8, method="ais", ais={"steps": 300}, estimators=["iwae"],
                           dtype=torch.float64, progress=False).summary.iloc[0]
    assert abs(ais["estimate"] - exact) < 3 * ais["se_mc"] + 1e-3
    plain = evalkit.estimate(model, x, k=8, estimators=["iwae"], dtype=torch.float64, progress=False).summary.iloc[0]
    assert exact - plain["estimate"] > 3 * plain["se_mc"]  # IWAE-8 from the poor proposal is visibly low


def test_sweep_against_an_ais_reference_is_labelled_with_its_settings():
    model = evalkit.load_model(REPO / "examples" / "digits_iwae.pt")
    x = evalkit.data.load_data("digits", split="test", binarize="bernoulli")[:24]
    with pytest.warns(UserWarning):
        result = evalkit.sweep(model, ks=[1, 10, 40], estimators=["iwae"], data=x, reference="ais",
                               reference_ais={"steps": 40, "chains": 3}, progress=False)
    assert result.reference.kind == "ais" and "40 steps, 3 chains" in result.reference.label
    direct = iwae(evalkit.ais(model, x, chains=3, steps=40, progress=False)).numpy()
    assert np.array_equal(result.reference.values, direct)
    table = result.table.set_index("k")
    assert table.loc[40, "bias"] == pytest.approx(float(np.mean(result.per_datapoint.query("k == 40")["mean"] - direct)))
    with pytest.raises(InputError, match="exact log_marginal"):
        evalkit.sweep(LinearGaussianModel.random(4, 1), ks=[1, 2], data=torch.zeros(3, 4), reference="ais")


def test_method_and_options_are_checked(gaussian):
    model, x = gaussian
    with pytest.raises(InputError, match="method must be one of is, ais"):
        evalkit.estimate(model, x, k=2, method="hmc", estimators=["iwae"])
    with pytest.raises(InputError, match="unknown AIS options"):
        evalkit.estimate(model, x, k=2, method="ais", ais={"temperature": 2}, estimators=["iwae"])
    with pytest.raises(InputError, match="apply to method='ais'"):
        evalkit.estimate(model, x, k=2, ais={"steps": 10}, estimators=["iwae"])


def _cli(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "evalkit", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_ais_with_a_cache_resumes_bitwise_after_sigkill(tmp_path):
    common = ["estimate", str(REPO / "examples" / "digits_iwae.pt"), "--binarize", "bernoulli", "--method", "ais",
              "--chains", "4", "--steps", "60", "-e", "iwae", "--cache-shard-size", "32", "--format", "json"]
    full = _cli([*common, "--cache", "full", "--save-log-weights", "full.npy", "-o", "full.json"], tmp_path)
    assert full.wait(timeout=900) == 0, full.stderr.read()
    killed = _cli([*common, "--cache", "part", "--save-log-weights", "part.npy", "-o", "part.json"], tmp_path)
    deadline = time.monotonic() + 600
    while not list((tmp_path / "part").glob("shard-*.sha256")):
        assert killed.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert 1 <= len(list((tmp_path / "part").glob("shard-*.npy"))) < 12 and not (tmp_path / "part.npy").exists()
    resumed = _cli([*common, "--cache", "part", "--save-log-weights", "part.npy", "-o", "part.json"], tmp_path)
    assert resumed.wait(timeout=900) == 0, resumed.stderr.read()
    assert "resuming from cache part" in resumed.stderr.read()
    assert (tmp_path / "part.npy").read_bytes() == (tmp_path / "full.npy").read_bytes()
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("full.json", "part.json"))
    assert one["estimates"] == two["estimates"]
    # The AIS settings are part of the cache's fingerprint: other steps refuse the cache.
    other = _cli([*common[:9], "61", *common[10:], "--cache", "part"], tmp_path)
    assert other.wait(timeout=300) == 1 and "cache" in other.stderr.read()


@pytest.mark.slow
def test_ais_under_torchrun_equals_one_process(tmp_path):
    common = ["-m", "evalkit", "estimate", str(REPO / "examples" / "digits_iwae.pt"), "--binarize", "bernoulli",
              "--method", "ais", "--chains", "3", "--steps", "20", "-e", "iwae", "--format", "json"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *common, "-o", "two.json", "--save-log-weights", "two.npy"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr
    one = subprocess.run([sys.executable, *common, "-o", "one.json", "--save-log-weights", "one.npy", "--quiet"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr
    assert np.array_equal(np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy"))
    docs = [json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json")]
    for doc in docs:
        doc["metadata"].pop("elapsed_seconds"), doc["metadata"].pop("provenance")  # timings; command, date
    assert docs[0] == docs[1]  # the acceptance rate too: rank 0 gathers every process's


def test_cli_bdmc_writes_tables_and_a_figure(tmp_path):
    model = LinearGaussianModel.random(5, 1, seed=2)
    evalkit.save_model(model, tmp_path / "lg.pt")
    result = CliRunner().invoke(main, ["bdmc", str(tmp_path / "lg.pt"), "--n", "6", "--steps", "3,40", "--chains", "4",
                                       "--ks", "1,10", "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "BDMC bounds" in result.stdout and "exact" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "bdmc.csv", "bdmc.png", "bdmc.svg", "bdmc_per_datapoint.csv", "importance.csv"]
    summary = np.genfromtxt(tmp_path / "out" / "bdmc.csv", delimiter=",", names=True)
    assert np.all(summary["lower"] - 3 * summary["lower_se"] <= summary["exact"])
    assert np.all(summary["upper"] + 3 * summary["upper_se"] >= summary["exact"])


def test_cli_method_options_are_usage_errors_where_they_do_not_apply():
    checkpoint = str(REPO / "examples" / "digits_iwae.pt")
    for args, message in ((["--method", "ais", "-k", "4"], "give --chains C instead of -k"),
                          (["--steps", "10"], "apply to --method ais")):
        result = CliRunner().invoke(main, ["estimate", checkpoint, "--binarize", "bernoulli", *args])
        assert result.exit_code == 2 and message in result.output


@pytest.mark.slow
def test_sweep_against_ais_under_torchrun_equals_one_process(tmp_path):
    common = ["-m", "evalkit", "sweep", str(REPO / "examples" / "digits_iwae.pt"), "--binarize", "bernoulli",
              "--ks", "1,10,50", "-e", "iwae", "--reference", "ais", "--steps", "10", "--chains", "2",
              "--format", "csv", "--quiet"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *common], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr
    one = subprocess.run([sys.executable, *common], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr
    assert two.stdout == one.stdout and ",ais," in one.stdout  # rank 0 alone prints, the AIS reference included
