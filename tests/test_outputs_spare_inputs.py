"""No output over an input, and the outputs of one run together or not at all (issue 24, item 7).

On main, with --overwrite, ``-o model.pt`` replaced the checkpoint with a small table,
``--save-log-weights data.npy`` replaced the data and ``-o cache/manifest.json`` destroyed the
cache; and when a later output failed, the earlier ones stayed although the run exited 1.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import evalkit
from evalkit_cli.main import main
from evalkit import atomic
from evalkit.atomic import atomic_write_text, output_group
from evalkit.errors import OutputError

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = "an input of this run; an output never replaces an input, even with --overwrite, so choose another "


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(directory: Path) -> dict:
    return {str(p.relative_to(directory)): _digest(p) for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture()
def run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes((ROOT / "examples" / "digits_iwae.pt").read_bytes())
    np.save(tmp_path / "data.npy", evalkit.data.load_data("digits", binarize="bernoulli").numpy()[:40])
    return tmp_path


def _estimate(*extra):
    return CliRunner().invoke(main, ["estimate", "model.pt", "--data", "data.npy", "-k", "4", "-e", "iwae", "-q",
                                     *extra])


def test_output_over_the_checkpoint_is_refused(run_dir):
    before = _digest(run_dir / "model.pt")
    result = _estimate("-o", "model.pt", "--overwrite")
    assert result.exit_code == 1
    assert result.output == (f"Error: --output 'model.pt' is the same file as the checkpoint 'model.pt', {SUFFIX}"
                             "name\n")
    assert _digest(run_dir / "model.pt") == before


def test_saved_log_weights_over_the_data_are_refused(run_dir):
    before = _digest(run_dir / "data.npy")
    result = _estimate("--save-log-weights", "data.npy", "--overwrite")
    assert result.exit_code == 1
    assert result.output == (f"Error: --save-log-weights 'data.npy' is the same file as --data 'data.npy', {SUFFIX}"
                             "name\n")
    assert _digest(run_dir / "data.npy") == before


def test_output_inside_the_cache_is_refused_and_the_cache_still_resumes(run_dir):
    assert _estimate("--cache", "c").exit_code == 0
    before = _tree(run_dir / "c")
    result = _estimate("--cache", "c", "-o", "c/manifest.json", "--overwrite")
    assert result.exit_code == 1
    assert result.output == (f"Error: --output 'c/manifest.json' lies inside --cache 'c', {SUFFIX}location\n")
    assert _tree(run_dir / "c") == before
    assert _estimate("--cache", "c").exit_code == 0


def test_hard_links_and_symbolic_links_to_an_input_are_refused(run_dir):
    os.link(run_dir / "model.pt", run_dir / "hard.pt")
    os.symlink("data.npy", run_dir / "soft.csv")
    before = _digest(run_dir / "model.pt"), _digest(run_dir / "data.npy")
    hard = _estimate("--per-example", "hard.pt", "--overwrite")
    assert hard.exit_code == 1 and "--per-example 'hard.pt' is the same file as the checkpoint 'model.pt'" in hard.output
    soft = _estimate("--per-example", "soft.csv", "--overwrite")
    assert soft.exit_code == 1 and "--per-example 'soft.csv' is the same file as --data 'data.npy'" in soft.output
    assert (_digest(run_dir / "model.pt"), _digest(run_dir / "data.npy")) == before


def test_sweep_out_over_its_log_weights_file_is_refused(tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    np.savetxt(out / "sweep.csv", np.random.default_rng(0).normal(size=(6, 10)), delimiter=",")
    before = _digest(out / "sweep.csv")
    result = CliRunner().invoke(main, ["sweep", "--log-weights", str(out / "sweep.csv"), "--ks", "1,2,5,10",
                                       "--out", str(out), "--overwrite", "-q"])
    assert result.exit_code == 1
    assert f"--out '{out / 'sweep.csv'}' is the same file as --log-weights '{out / 'sweep.csv'}'" in result.output
    assert _digest(out / "sweep.csv") == before and sorted(p.name for p in out.iterdir()) == ["sweep.csv"]


def test_report_out_over_its_reference_file_is_refused(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    np.save(tmp_path / "lw.npy", np.random.default_rng(0).normal(size=(6, 10)))
    np.savetxt(out / "weights.csv", np.zeros(6))
    result = CliRunner().invoke(main, ["report", "--log-weights", str(tmp_path / "lw.npy"), "--ks", "1,2,5,10",
                                       "--reference", str(out / "weights.csv"), "--out", str(out), "--overwrite", "-q"])
    assert result.exit_code == 1
    assert f"is the same file as --reference '{out / 'weights.csv'}'" in result.output


def test_a_failing_second_output_leaves_the_first_absent(run_dir):
    # On main out.json stayed behind although the run exited 1.
    result = _estimate("-o", "out.json", "--per-example", "/dev/full", "--overwrite")
    assert result.exit_code == 1 and "cannot write '/dev/full' (No space left on device)" in result.output
    assert not (run_dir / "out.json").exists()
    (run_dir / "out.json").write_text("old\n")
    result = _estimate("-o", "out.json", "--per-example", "/dev/full", "--overwrite")
    assert result.exit_code == 1 and (run_dir / "out.json").read_text() == "old\n"
    assert sorted(p.name for p in run_dir.iterdir()) == ["data.npy", "model.pt", "out.json"]


def test_a_failing_save_of_the_log_weights_leaves_the_summary_and_table_absent(run_dir, monkeypatch):
    def broken_save(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(np, "save", broken_save)
    result = _estimate("-o", "out.json", "--per-example", "rows.csv", "--save-log-weights", "lw.npy")
    assert result.exit_code == 1 and "cannot write 'lw.npy' (Input/output error)" in result.output
    assert sorted(p.name for p in run_dir.iterdir()) == ["data.npy", "model.pt"]


def test_a_commit_that_fails_half_way_puts_the_replaced_files_back(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("old a")
    real_replace, calls = os.replace, []

    def replace_then_fail(src, dst):
        calls.append(Path(dst).name)
        if Path(dst).name == "c.txt":
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace_then_fail)
    with pytest.raises(OutputError, match=r"cannot write '.*c\.txt' \(No space left on device\)"):
        with output_group() as group:
            for name in ("a.txt", "b.txt", "c.txt"):
                atomic_write_text(tmp_path / name, f"new {name}", overwrite=True, group=group)
    assert calls[:3] == ["a.txt", "b.txt", "c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary, no kept link, no b.txt
    assert (tmp_path / "a.txt").read_text() == "old a"


def test_nothing_is_visible_before_the_commit_and_everything_after(tmp_path):
    with output_group() as group:
        atomic_write_text(tmp_path / "a.txt", "a", group=group)
        atomic_write_text(tmp_path / "b.txt", "b", group=group)
        assert not (tmp_path / "a.txt").exists() and not (tmp_path / "b.txt").exists()
    assert (tmp_path / "a.txt").read_text() == "a" and (tmp_path / "b.txt").read_text() == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_a_sweep_into_an_existing_directory_keeps_the_old_files_when_a_figure_fails(tmp_path, monkeypatch):
    import evalkit.output.plots as plots

    log_w = np.random.default_rng(1).normal(size=(8, 10))
    result = evalkit.sweep(log_w, ks=[1, 2, 5, 10])
    out = tmp_path / "runs"
    result.save(out, formats=("svg",))
    before = _tree(out)

    def broken_savefig(fig, stem, **kwargs):
        raise OutputError("cannot write the figure (simulated)")

    monkeypatch.setattr(plots, "save_figure", broken_savefig)
    with pytest.raises(OutputError, match="simulated"):
        evalkit.sweep(log_w + 1.0, ks=[1, 2, 5, 10]).save(out, formats=("svg",), overwrite=True)
    assert _tree(out) == before


def test_bdmc_out_inside_a_checkpoint_directory_is_refused(tmp_path):
    model = evalkit.models.LinearGaussianModel.random(data_dim=4, latent_dim=2)
    evalkit.save_model(model, f"{tmp_path / 'ckpt'}/")  # a directory: model.json + model.safetensors
    assert (tmp_path / "ckpt").is_dir()
    before = _tree(tmp_path / "ckpt")
    result = CliRunner().invoke(main, ["bdmc", str(tmp_path / "ckpt"), "--n", "2", "--steps", "2", "--ks", "1",
                                       "--out", str(tmp_path / "ckpt"), "--overwrite", "-q"])
    assert result.exit_code == 1
    assert f"--out '{tmp_path / 'ckpt' / 'bdmc.csv'}' lies inside the checkpoint '{tmp_path / 'ckpt'}'" in result.output
    assert _tree(tmp_path / "ckpt") == before
