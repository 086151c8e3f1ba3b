"""Image data at the model's levels (issue 24, item 4).

A model with a discrete decoder declares ``data_levels``. The built-in digits have 17 grey levels
(0..16); a 256-level model scored them as 8-bit values (21.19 bpd, exit 0 on main). Now they are
refused for a model of another level count, ``rescale_levels=True`` / ``--rescale-levels`` maps
them with ``v -> floor(v (L - 1) / 16 + 1/2)``, and data whose largest value is below half the
model's top level get a :class:`evalkit.errors.DataWarning` naming both (``--quiet`` hides it).
"""
from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import evalkit
from evalkit_cli.main import main
from evalkit.data import DIGITS_LEVELS, load_images, rescale_levels
from evalkit.errors import DataError, DataWarning, InputError
from evalkit.models import ConvVAE

REFUSAL = ("the built-in digits have 17 grey levels (0..16) but the model's decoder takes data_levels=256 (0..255), "
           "so it would read their white (16) as 16 of 255; pass --rescale-levels (rescale_levels=True) to map each "
           "level v to floor(v * 255 / 16 + 1/2), or give --data a file with 256 levels.")


def _model(levels):
    torch.manual_seed(0)
    return ConvVAE((1, 8, 8), 3, (4, 8), decoder="logistic", levels=levels).double()


@pytest.mark.parametrize("s, l", [(17, 256), (256, 17), (2, 256), (17, 17), (17, 2), (256, 65536), (3, 5)])
def test_rescale_levels_is_the_nearest_level_of_the_same_intensity(s, l):
    v = torch.arange(s)
    expected = [int(Fraction(int(i) * (l - 1), s - 1) + Fraction(1, 2)) for i in v]  # floor(v (L-1)/(S-1) + 1/2)
    got = rescale_levels(v, s, l)
    assert got.tolist() == expected
    assert got[0] == 0 and got[-1] == l - 1 and bool((got[1:] >= got[:-1]).all())
    # Each result is the level whose intensity v'/(L-1) is nearest v/(S-1) (ties up); brute force up to 256 levels.
    for i, j in zip(v.tolist(), got.tolist()) if l <= 256 else ():
        best = min(range(l), key=lambda c: (abs(Fraction(c, l - 1) - Fraction(i, s - 1)), -c))
        assert j == best


def test_rescale_levels_keeps_dtype_and_refuses_values_outside():
    images = torch.tensor([[0, 16], [8, 1]], dtype=torch.uint8)
    out = rescale_levels(images, 17, 256)
    assert out.dtype == torch.uint8 and out.tolist() == [[0, 255], [128, 16]]
    with pytest.raises(DataError, match="outside 0..16"):
        rescale_levels(torch.tensor([17]), 17, 256)
    with pytest.raises(InputError, match="to_levels"):
        rescale_levels(images, 17, 1)


@pytest.mark.parametrize("run", ["estimate", "sweep"])
def test_digits_are_refused_for_a_model_of_other_levels(run):
    call = evalkit.estimate if run == "estimate" else evalkit.sweep
    kwargs = {"k": 4} if run == "estimate" else {"ks": [1, 2, 4]}
    with pytest.raises(DataError) as info:
        call(_model(256), data="digits", progress=False, **kwargs)
    assert str(info.value) == REFUSAL


def test_cli_default_data_is_refused_for_an_8_bit_model(tmp_path, monkeypatch):
    # On main: `evalkit estimate conv256.pt` scored the digits as 8-bit values and exited 0.
    monkeypatch.chdir(tmp_path)
    evalkit.save_model(_model(256), "conv256.pt")
    result = CliRunner().invoke(main, ["estimate", "conv256.pt", "-k", "4", "-e", "iwae", "-o", "out.json"])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {REFUSAL}"
    assert not (tmp_path / "out.json").exists()


def test_rescaled_digits_are_the_explicitly_rescaled_images():
    model = _model(256)
    images = rescale_levels(load_images("digits"), DIGITS_LEVELS, 256)
    assert int(images.max()) == 255
    ours = evalkit.estimate(model, data="digits", rescale_levels=True, k=8, estimators=["iwae"], progress=False)
    by_hand = evalkit.estimate(model, data=images.double(), k=8, estimators=["iwae"], progress=False)
    assert ours.summary["estimate"].tolist() == by_hand.summary["estimate"].tolist()
    assert "17 levels rescaled to 256" in ours.metadata["data"]


def test_cli_rescale_levels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evalkit.save_model(_model(256), "conv256.pt")
    result = CliRunner().invoke(main, ["estimate", "conv256.pt", "--rescale-levels", "-k", "4", "-e", "iwae", "-q",
                                       "--format", "json"])
    assert result.exit_code == 0, result.output
    assert "17 levels rescaled to 256" in result.stdout


def test_digits_at_their_own_levels_need_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evalkit.estimate(_model(17), data="digits", k=4, estimators=["iwae"], progress=False)


def test_rescale_levels_is_refused_where_the_levels_are_unknown(tmp_path):
    np.save(tmp_path / "images.npy", load_images("digits").numpy())
    with pytest.raises(InputError, match="applies to the built-in digits"):
        evalkit.estimate(_model(256), data=tmp_path / "images.npy", rescale_levels=True, k=4, progress=False)
    lg = evalkit.models.LinearGaussianModel.random(data_dim=5, latent_dim=2)
    with pytest.raises(InputError, match="this model has no data_levels"):
        evalkit.estimate(lg, data=torch.zeros(3, 5), rescale_levels=True, k=4, progress=False)


def test_dark_data_file_gets_one_data_warning_naming_both(tmp_path):
    np.save(tmp_path / "images.npy", load_images("digits").numpy())  # 17 levels, for a 256-level model
    with pytest.warns(DataWarning) as records:
        evalkit.estimate(_model(256), data=tmp_path / "images.npy", k=4, estimators=["iwae"], progress=False)
    data_warnings = [r for r in records if issubclass(r.category, DataWarning)]
    assert len(data_warnings) == 1
    text = str(data_warnings[0].message)
    assert "largest value is 16" in text and "levels 0..255 (data_levels=256)" in text
    assert data_warnings[0].filename == __file__  # points at the caller's line


def test_bright_enough_data_get_no_warning(tmp_path):
    images = load_images("digits").numpy().astype(np.int64) * 8  # largest value 128 >= 255 / 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        evalkit.estimate(_model(256), data=images, k=4, estimators=["iwae"], progress=False)


def test_cli_warns_on_stderr_and_quiet_hides_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evalkit.save_model(_model(256), "conv256.pt")
    np.save("images.npy", load_images("digits").numpy())
    args = ["estimate", "conv256.pt", "--data", "images.npy", "-k", "4", "-e", "iwae", "--format", "json"]
    loud = CliRunner().invoke(main, args)
    assert loud.exit_code == 0, loud.output
    lines = [line for line in loud.stderr.splitlines() if line.startswith("warning:")]
    assert lines == ["warning: the data's largest value is 16 but the model's decoder takes levels 0..255 "
                     "(data_levels=256); if the data have fewer levels (the digits' 17, say), rescale them to 0..255 "
                     "first (evalkit.data.rescale_levels), or the model scores them as nearly black images."]
    quiet = CliRunner().invoke(main, args + ["--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
