"""Datasets: the digits split, file formats, binarisation and the data-versus-model checks."""
import numpy as np
import pytest
import torch

from evalkit.data import binarize, check_data_for_model, digits_split, load_data
from evalkit.errors import DataError, InputError
from evalkit.models import MLPVAE


def test_digits_splits_are_fixed_disjoint_and_scaled():
    from sklearn.datasets import load_digits

    raw = load_digits().data
    splits = digits_split()
    assert len(splits["train"]) == 1438 and len(splits["test"]) == 359
    assert not set(splits["train"]) & set(splits["test"])
    assert sorted([*splits["train"], *splits["test"]]) == list(range(1797))
    test = load_data("digits")
    assert test.shape == (359, 64) and test.dtype == torch.float32
    assert torch.equal(test, torch.from_numpy(raw[splits["test"]] / 16).float())
    assert load_data("digits", split="train").shape == (1438, 64) and load_data("digits", split="all").shape == (1797, 64)
    assert float(test.min()) == 0.0 and float(test.max()) == 1.0


def test_threshold_binarisation():
    x = load_data("digits", binarize="threshold")
    assert torch.equal(x, (load_data("digits") > 0.5).float())


def test_bernoulli_binarisation_is_seeded_per_datapoint():
    grey = load_data("digits", split="all")
    full = load_data("digits", split="all", binarize="bernoulli", seed=3)
    assert set(full.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(full, load_data("digits", split="all", binarize="bernoulli", seed=3))
    assert not torch.equal(full, load_data("digits", split="all", binarize="bernoulli", seed=4))
    # A subset (the test split, or any rows with their dataset indices) binarises as inside the full set.
    assert torch.equal(load_data("digits", binarize="bernoulli", seed=3), full[digits_split()["test"]])
    rows = torch.tensor([5, 900, 17])
    assert torch.equal(binarize(grey[rows], "bernoulli", seed=3, indices=rows), full[rows])
    # E[x_bin] = x: over 115 008 pixels the mean agrees to a few standard errors.
    se = float(torch.sqrt((grey * (1 - grey)).sum())) / grey.numel()
    assert abs(float(full.mean() - grey.mean())) < 4 * se


def test_bernoulli_binarisation_needs_unit_interval():
    with pytest.raises(DataError, match=r"values in \[0, 1\], got range \[0, 255\].*divide 8-bit images by 255"):
        binarize(torch.tensor([[0.0, 255.0]]), "bernoulli")


def test_binarize_does_not_write_back():
    x = torch.tensor([[0.2, 0.7]])
    binarize(x, "threshold")
    binarize(x, "bernoulli")
    assert torch.equal(x, torch.tensor([[0.2, 0.7]]))


def test_npy_images_are_flattened(tmp_path):
    images = np.random.default_rng(0).random((5, 2, 3, 3)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    x = load_data(tmp_path / "images.npy")
    assert x.shape == (5, 18) and torch.equal(x, torch.from_numpy(images.reshape(5, 18)))


def test_npz_picks_the_split_or_the_single_array(tmp_path):
    train, test = np.zeros((4, 3)), np.ones((2, 3))
    np.savez(tmp_path / "both.npz", train=train, test=test)
    assert torch.equal(load_data(tmp_path / "both.npz"), torch.ones(2, 3))
    assert torch.equal(load_data(tmp_path / "both.npz", split="train"), torch.zeros(4, 3))
    np.savez(tmp_path / "one.npz", images=test)
    assert load_data(tmp_path / "one.npz").shape == (2, 3)
    np.savez(tmp_path / "named.npz", x=test, labels=np.arange(2))
    assert load_data(tmp_path / "named.npz").shape == (2, 3)


def test_ambiguous_npz_lists_the_keys(tmp_path):
    np.savez(tmp_path / "two.npz", images=np.ones((2, 3)), labels=np.arange(2))
    with pytest.raises(DataError, match=r"holds arrays \['images', 'labels'\].*'test', 'x' or 'data'"):
        load_data(tmp_path / "two.npz")


def test_single_array_file_has_no_train_split(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((2, 3)))
    assert load_data(tmp_path / "x.npy", split="all").shape == (2, 3)
    with pytest.raises(DataError, match=r"holds one array, a single dataset; read it with the test or all split \(--split test"):
        load_data(tmp_path / "x.npy", split="train")
    np.savez(tmp_path / "x.npz", images=np.ones((2, 3)))
    with pytest.raises(DataError, match=r"holds arrays \['images'\]; none is named 'train'"):
        load_data(tmp_path / "x.npz", split="train")


def test_pt_tensor_and_dict(tmp_path):
    torch.save(torch.arange(6.0).reshape(2, 3), tmp_path / "t.pt")
    torch.save({"data": torch.ones(4, 2, 2)}, tmp_path / "d.pt")
    assert torch.equal(load_data(tmp_path / "t.pt"), torch.arange(6.0).reshape(2, 3))
    assert load_data(tmp_path / "d.pt").shape == (4, 4)


def test_csv_with_and_without_header(tmp_path):
    (tmp_path / "h.csv").write_text("a,b,c\n0,1,0.5\n1,0,0.25\n")
    (tmp_path / "n.csv").write_text("0,1,0.5\n1,0,0.25\n")
    expected = torch.tensor([[0, 1, 0.5], [1, 0, 0.25]])
    assert torch.equal(load_data(tmp_path / "h.csv"), expected)
    assert torch.equal(load_data(tmp_path / "n.csv"), expected)
    (tmp_path / "bad.csv").write_text("a,b\n1,x\n")
    with pytest.raises(DataError, match="not a numeric CSV"):
        load_data(tmp_path / "bad.csv")


@pytest.mark.parametrize(
    "name,content,message",
    [("missing.npy", None, "does not exist"), ("data.txt", b"1 2", "unsupported suffix '.txt'"),
     ("broken.npy", b"garbage", "cannot read"), ("broken.pt", b"garbage", "cannot read")],
)
def test_unreadable_sources(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_data(tmp_path / name)


@pytest.mark.parametrize("kwargs,message", [({"split": "valid"}, "`split`"), ({"binarize": "yes"}, "`binarize`"),
                                            ({"seed": -2}, "`seed`")])
def test_bad_options(kwargs, message):
    with pytest.raises(InputError, match=message):
        load_data("digits", **kwargs)


@pytest.fixture(scope="module")
def bernoulli_model():
    return MLPVAE(4, 2, (3,))


def test_check_data_for_model(bernoulli_model):
    check_data_for_model(torch.tensor([[0.0, 1.0, 1.0, 0.0]]), bernoulli_model)
    with pytest.raises(DataError, match="empty"):
        check_data_for_model(torch.zeros(0, 4), bernoulli_model)
    with pytest.raises(DataError, match="5 values per datapoint but the model expects data_dim=4"):
        check_data_for_model(torch.zeros(2, 5), bernoulli_model)
    with pytest.raises(DataError, match=r"NaN or infinite values in rows \[1, 3\] \(2 rows\)"):
        check_data_for_model(torch.tensor([[0.0] * 4, [float("nan"), 0, 0, 0], [0.0] * 4, [0, float("inf"), 0, 0]]),
                             bernoulli_model)
    with pytest.raises(DataError, match=r"rows \[0\] \(1 rows\) are not binary.*binarize='bernoulli'.*binarize='threshold'"):
        check_data_for_model(torch.tensor([[0.5, 1.0, 0.0, 0.0]]), bernoulli_model)
    with pytest.raises(DataError, match="scale them to"):
        check_data_for_model(torch.tensor([[255.0, 0.0, 0.0, 0.0]]), bernoulli_model)
    check_data_for_model(torch.rand(3, 4), MLPVAE(4, 2, (3,), likelihood="gaussian"))


def test_digits_fall_back_to_load_digits_when_the_csv_is_not_found(monkeypatch):
    import importlib.util

    from evalkit import data

    direct = data._digits_pixel_counts()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert np.array_equal(data._digits_pixel_counts(), direct)


@pytest.mark.parametrize("empty", [torch.zeros(0, 64), np.zeros((0, 64))])
def test_empty_in_memory_data_is_a_data_error_for_estimate_and_sweep(empty):
    import evalkit

    model = evalkit.load_model("examples/digits_iwae.pt")
    with pytest.raises(DataError, match=r"data has shape \(0, 64\): no datapoints"):
        evalkit.estimate(model, empty, k=10)
    with pytest.raises(DataError, match="no datapoints"):
        evalkit.sweep(model, data=empty, ks=[1, 10])
