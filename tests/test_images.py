"""Integer image loading (layouts, containers, digits), discrete-data checks against a model,
and the nats <-> bits-per-dimension conversions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import evalkit
from evalkit.data import check_data_for_model, load_data, load_images
from evalkit.errors import DataError, InputError
from evalkit.models import ConvVAE
from evalkit.units import bits_per_dim, nats_from_bits_per_dim, se_bits_per_dim, se_nats_from_bits_per_dim


def _images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("layout, shape, to_nchw", [
    ("NHW", (5, 6, 7), lambda a: a[:, None]),
    ("NHWC", (5, 6, 7, 3), lambda a: a.transpose(0, 3, 1, 2)),
    ("NCHW", (5, 3, 6, 7), lambda a: a),
])
@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt"])
def test_layouts_detected_from_files(tmp_path, layout, shape, to_nchw, suffix):
    array = _images(shape)
    path = tmp_path / f"images{suffix}"
    if suffix == ".npy":
        np.save(path, array)
    elif suffix == ".npz":
        np.savez(path, x=array)
    else:
        torch.save({"x": torch.from_numpy(array)}, path)
    loaded = load_images(path)
    assert loaded.dtype == torch.uint8
    assert np.array_equal(loaded.numpy(), to_nchw(array))
    assert np.array_equal(load_images(path, layout=layout).numpy(), to_nchw(array))


def test_split_from_container(tmp_path):
    train, test = _images((4, 8, 8), 1), _images((3, 8, 8), 2)
    np.savez(tmp_path / "d.npz", train=train, test=test)
    assert np.array_equal(load_images(tmp_path / "d.npz", split="train")[:, 0].numpy(), train)
    assert np.array_equal(load_images(tmp_path / "d.npz")[:, 0].numpy(), test)


def test_ambiguous_layout_needs_the_argument():
    array = _images((2, 3, 5, 3))
    with pytest.raises(DataError, match="layout='NCHW' or layout='NHWC'"):
        load_images(array)
    assert load_images(array, layout="NHWC").shape == (2, 3, 3, 5)
    assert load_images(array, layout="NCHW").shape == (2, 3, 5, 3)
    with pytest.raises(InputError, match="layout"):
        load_images(array, layout="HWC")


@pytest.mark.parametrize("array, message", [
    (np.random.default_rng(0).random((2, 4, 4)), "non-integer float values"),
    (-np.ones((2, 4, 4), dtype=np.int64), "negative values"),
    (np.zeros((2, 16), dtype=np.uint8), "shape"),
    (np.zeros((2, 4, 4), dtype=bool), "bool"),
])
def test_bad_image_arrays(array, message):
    with pytest.raises(DataError, match=message):
        load_images(array)


def test_integer_valued_floats_and_wide_ints_become_int64():
    assert load_images(np.full((2, 4, 4), 3.0)).dtype == torch.int64
    assert load_images(np.full((2, 4, 4), 1000, dtype=np.int32)).dtype == torch.int64


def test_digits_images_are_the_digits_pixel_counts():
    for split, n in (("test", 359), ("train", 1438), ("all", 1797)):
        images = load_images("digits", split=split)
        assert images.shape == (n, 1, 8, 8) and images.dtype == torch.uint8
        # The same rows as load_data("digits"), which divides the counts 0..16 by 16.
        assert torch.equal(images.reshape(n, 64).float(), load_data("digits", split=split) * 16)
    assert int(load_images("digits", split="all").max()) == 16


@pytest.fixture(scope="module")
def model17():
    torch.manual_seed(0)
    return ConvVAE((1, 8, 8), 4, (4, 8), decoder="logistic", levels=17)


def test_scaled_float_data_is_rejected_with_the_fix(model17):
    with pytest.raises(DataError, match=r"non-integer values .*\(evalkit.data.load_images\)"):
        check_data_for_model(load_data("digits"), model17)
    with pytest.raises(DataError, match="non-integer"):  # scaled floats in memory ("digits" by name loads the levels)
        evalkit.estimate(model17, load_data("digits"), k=10, progress=False)


def test_values_out_of_range_are_rejected_naming_rows(model17):
    images = load_images("digits").reshape(359, 64).clone()
    images[[3, 7]] = 17
    with pytest.raises(DataError, match=r"values 0..16 but rows \[3, 7\] \(2 rows\)"):
        check_data_for_model(images, model17)
    check_data_for_model(load_images("digits").reshape(359, 64), model17)  # integer data pass
    check_data_for_model(load_images("digits").reshape(359, 64).float(), model17)  # as integer-valued floats too


def test_bernoulli_conv_vae_needs_binary_data():
    model = ConvVAE((1, 8, 8), 4, (4, 8), decoder="bernoulli", levels=2)
    with pytest.raises(DataError, match="Bernoulli decoder"):
        check_data_for_model(load_images("digits").reshape(359, 64), model)


def test_bits_per_dim_conversions():
    dims = 64
    assert bits_per_dim(-dims * math.log(2.0), dims) == 1.0
    nats = torch.tensor([-100.0, -3.5, 0.0], dtype=torch.float32)
    bpd = bits_per_dim(nats, dims)
    assert bpd.dtype == torch.float64
    assert torch.equal(bpd, -nats.double() / (dims * math.log(2.0)))
    assert torch.allclose(nats_from_bits_per_dim(bpd, dims), nats.double(), rtol=1e-15, atol=0)
    array = np.array([-50.0, -60.0])
    assert np.array_equal(bits_per_dim(array, dims), -array / (dims * math.log(2.0)))
    assert se_bits_per_dim(0.5, dims) == 0.5 / (dims * math.log(2.0)) > 0
    assert se_nats_from_bits_per_dim(se_bits_per_dim(0.5, dims), dims) == pytest.approx(0.5, rel=1e-15)
    assert torch.equal(nats, torch.tensor([-100.0, -3.5, 0.0]))  # no write-back
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="dims"):
            bits_per_dim(1.0, bad)
