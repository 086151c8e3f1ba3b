"""Image models through the whole pipeline: data for a discrete decoder, the estimators, sweeps,
the cache, torchrun and bitwise batch invariance, with the bundled ConvVAE on the digits' 17 levels."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import evalkit
from evalkit_cli.main import main
from evalkit.data import load_data, load_images
from evalkit.errors import DataError
from evalkit.sources import resolve_data

REPO = Path(__file__).resolve().parents[1]
CONV = str(REPO / "examples" / "digits_conv_vae.pt")
ROWS = [0, 5, 17, 40, 41, 100, 358]

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.errors.WeightWarning")


@pytest.fixture(scope="module")
def model():
    return evalkit.load_model(CONV)


@pytest.fixture(scope="module")
def images():
    return load_images("digits")  # uint8 [359, 1, 8, 8], values 0..16


# -- data for a discrete decoder (resolve_data, the one place that loads data for a model) --------


def test_digits_for_a_discrete_model_are_the_17_integer_levels(model, images):
    x = resolve_data("digits", model=model)
    assert x.dtype == torch.float32 and x.shape == (359, 64)
    assert torch.equal(x, images.reshape(359, 64).to(torch.float32))
    assert x.max() == 16 and torch.equal(x, x.round())
    # The same rows as the float digits, which are these counts / 16.
    assert torch.equal(load_data("digits"), x / 16)


def test_models_without_data_levels_still_get_the_scaled_floats():
    bernoulli = evalkit.load_model(str(REPO / "examples" / "digits_iwae.pt"))
    x = resolve_data("digits", model=bernoulli, binarize="threshold")
    assert torch.equal(x, load_data("digits", binarize="threshold"))
    gaussian = torch.nn.Linear(1, 1)  # no data_levels: load_data's floats, as before
    assert torch.equal(resolve_data("digits", model=None), load_data("digits"))
    assert not hasattr(gaussian, "data_levels")


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW", "NHW"])
def test_uint8_image_files_are_read_channel_major_for_a_discrete_model(model, images, tmp_path, suffix, layout):
    nchw = images[:9].numpy()
    stored = {"NCHW": nchw, "NHWC": nchw.transpose(0, 2, 3, 1), "NHW": nchw[:, 0]}[layout]
    path = tmp_path / f"x{suffix}"
    if suffix == ".npy":
        np.save(path, stored)
    elif suffix == ".npz":
        np.savez(path, x=stored)
    else:
        torch.save(torch.from_numpy(np.ascontiguousarray(stored)), path)
    x = resolve_data(str(path), model=model)
    assert torch.equal(x, torch.from_numpy(nchw.reshape(9, 64)).to(torch.float32))


def test_in_memory_nhwc_images_are_flattened_channel_major(images):
    from evalkit.models import ConvVAE

    rgb = ConvVAE((3, 8, 8), 2, (4,), decoder="categorical", levels=5)
    nchw = np.random.default_rng(0).integers(0, 5, size=(4, 3, 8, 8)).astype(np.uint8)
    x = resolve_data(nchw.transpose(0, 2, 3, 1).copy(), model=rgb)
    assert torch.equal(x, torch.from_numpy(nchw.reshape(4, -1)).to(torch.float32))
    assert torch.equal(resolve_data(torch.from_numpy(nchw).double(), model=rgb), torch.from_numpy(nchw.reshape(4, -1)).double())


def test_scaled_floats_in_a_file_are_refused_for_a_discrete_model(model, images, tmp_path):
    np.save(tmp_path / "f.npy", images[:3].numpy() / 16.0)
    with pytest.raises(DataError, match="images must be the integer levels"):
        resolve_data(str(tmp_path / "f.npy"), model=model)


def test_cli_estimate_of_the_conv_example_on_digits(tmp_path):
    out = CliRunner().invoke(main, ["estimate", CONV, "--data", "digits", "-k", "5", "-e", "iwae", "-q",
                                    "--format", "json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["metadata"]["n"] == 359 and doc["metadata"]["dims"] == 64
    assert -120 < doc["estimates"][0]["estimate"] < -70  # nats on the 17-level lattice (log 17^64 = 181)


# -- estimators, sweeps, cache and batch invariance, unchanged -----------------------------------


def test_log_weights_are_bitwise_independent_of_batching(model, images):
    x = images.reshape(359, 64)[ROWS]
    common = dict(seed=3, indices=torch.tensor(ROWS), progress=False)
    reference = evalkit.log_weights(model, x, 64, **common)
    for options in ({"batch_size": 1}, {"batch_size": 3, "k_chunk": 7}, {"k_chunk": 64, "threads": 1}):
        assert torch.equal(evalkit.log_weights(model, x, 64, **common, **options), reference), options
    # A subset keeps every datapoint's own stream: the rows equal those of the full-data run.
    part = evalkit.estimate(CONV, images[ROWS[:3]], k=64, seed=3, indices=torch.tensor(ROWS[:3]),
                            keep_log_weights=True, progress=False)
    assert torch.equal(part.log_weights, reference[:3].to(torch.float64))


def test_estimate_equals_the_estimators_on_its_own_log_weights(model, images):
    result = evalkit.estimate(CONV, images[ROWS], k=50, seed=1, indices=torch.tensor(ROWS), keep_log_weights=True,
                              block_size=2, progress=False)
    again = evalkit.estimate_from_log_weights(result.log_weights)
    assert result.summary[["estimate", "se_data", "se_mc"]].equals(again.summary[["estimate", "se_data", "se_mc"]])
    per = result.per_example
    lse = torch.logsumexp(result.log_weights, dim=1) - np.log(50)
    np.testing.assert_allclose(per["iwae"], lse.numpy(), rtol=0, atol=1e-12)


def test_sweep_of_the_model_equals_the_sweep_of_its_pool(model):
    ks = [1, 5, 20]
    swept = evalkit.sweep(CONV, data="digits", ks=ks, seed=2, indices=ROWS, keep_log_weights=True, progress=False)
    from_pool = evalkit.sweep(swept.log_weights.numpy(), ks=ks, dims=64, progress=False)
    cols = ["estimate", "estimate_se", "variance", "rmse"]
    assert swept.table[cols].equals(from_pool.table[cols])
    assert swept.metadata["dims"] == from_pool.metadata["dims"] == 64


def test_the_cache_gives_bitwise_the_same_result_and_reads_it_back(tmp_path):
    common = dict(k=16, seed=4, estimators=["iwae", "jvi1"], progress=False, batch_size=64)
    plain = evalkit.estimate(CONV, "digits", **common)
    cached = evalkit.estimate(CONV, "digits", cache=tmp_path / "c", cache_shard_size=100, **common)
    assert plain.summary.equals(cached.summary)
    shards = sorted((tmp_path / "c").rglob("*.npy")) or sorted((tmp_path / "c").rglob("*"))
    assert shards  # the cache holds the shards; a second call reads them back
    again = evalkit.estimate(CONV, "digits", cache=tmp_path / "c", cache_shard_size=100, **common)
    assert again.summary.equals(plain.summary)


@pytest.mark.slow
def test_cli_under_torchrun_writes_once_and_equals_one_process(tmp_path):
    common = ["estimate", CONV, "--data", "digits", "-k", "20", "-e", "iwae", "-e", "jvi2", "--units", "bpd",
              "--format", "json"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = subprocess.run([*torchrun, "-m", "evalkit", *common, "-o", "two.json", "--per-example", "two.csv",
                          "--save-log-weights", "two.npy"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=env)
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("wrote") <= 1 and sorted(p.name for p in tmp_path.iterdir()) == [
        "two.csv", "two.json", "two.npy"]
    single = subprocess.run([sys.executable, "-m", "evalkit", *common, "-o", "one.json", "--per-example", "one.csv",
                             "--save-log-weights", "one.npy", "--quiet"], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    assert np.array_equal(np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy"))
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "two.csv").read_bytes()
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    for doc in (one, two):
        doc["metadata"].pop("elapsed_seconds", None), doc["metadata"].pop("provenance", None)  # command, date
    assert one == two and one["metadata"]["dims"] == 64 and one["estimates"][0]["estimate_bpd"] is not None
