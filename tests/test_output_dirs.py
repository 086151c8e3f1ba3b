"""One rule for output directories (issue 25): missing ones are created, from Python and the CLI alike.

``EstimateResult.save('a/b/c.json')`` created ``a/b`` while ``evalkit estimate -o a/b/c.json``
refused with "create it first". Now every output of every command, and ``save``, go through
:func:`evalkit.atomic.check_writable` (before any work: the nearest existing ancestor must be a
writable directory) and create the missing directories when writing, removing them again if the
run fails: outputs appear whole or not at all.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import evalkit
from evalkit_cli.main import main
from evalkit.errors import OutputError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes((ROOT / "examples" / "digits_iwae.pt").read_bytes())
    np.save(tmp_path / "data.npy", evalkit.data.load_data("digits", binarize="bernoulli").numpy()[:20])
    np.save(tmp_path / "lw.npy", np.random.default_rng(0).normal(size=(20, 40)))
    return tmp_path


def _files(directory: Path):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def _invoke(*args):
    return CliRunner().invoke(main, [*args, "-q"])


def _estimate(*extra):
    return _invoke("estimate", "model.pt", "--data", "data.npy", "-k", "4", "-e", "iwae", *extra)


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0][len("Error: "):]


def test_estimate_creates_the_missing_directories_of_every_output(run_dir):
    result = _estimate("-o", "new/dir/out.json", "--per-example", "new/rows/rows.csv",
                       "--save-log-weights", "deep/a/b/lw.npy")
    assert result.exit_code == 0, result.output
    assert (run_dir / "new" / "dir" / "out.json").read_text().startswith("{")
    assert (run_dir / "new" / "rows" / "rows.csv").exists() and (run_dir / "deep" / "a" / "b" / "lw.npy").exists()
    assert not [p for p in _files(run_dir) if p.endswith(".tmp")]


@pytest.mark.parametrize("command, made", [
    (["sweep", "--log-weights", "lw.npy", "--ks", "1,4,16", "--out", "runs/a/sweep"], "runs/a/sweep/sweep.csv"),
    (["report", "--log-weights", "lw.npy", "--ks", "1,4,16", "--out", "runs/b/report"], "runs/b/report/report.html"),
    (["compare", "model.pt", "model.pt", "--data", "data.npy", "-k", "4", "-e", "iwae", "--name", "a", "--name", "b",
      "-o", "runs/c/compare.json", "--per-example", "runs/d/rows.csv", "--report", "runs/e/report"],
     "runs/c/compare.json"),
], ids=["sweep", "report", "compare"])
def test_every_command_creates_the_missing_directories_of_its_outputs(run_dir, command, made):
    result = _invoke(*command)
    assert result.exit_code == 0, result.output
    assert (run_dir / made).is_file()


def test_bdmc_creates_the_missing_directories_of_its_out(tmp_path):
    model = evalkit.models.LinearGaussianModel.random(data_dim=4, latent_dim=2)
    evalkit.save_model(model, tmp_path / "lg.pt")
    result = _invoke("bdmc", str(tmp_path / "lg.pt"), "--n", "3", "--steps", "2", "--ks", "1", "--chains", "2",
                     "--out", str(tmp_path / "runs" / "new" / "bdmc"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "new" / "bdmc" / "bdmc.csv").is_file()


@pytest.mark.parametrize("option", ["-o", "--per-example", "--save-log-weights"])
def test_an_output_below_a_regular_file_is_one_sentence(run_dir, option):
    (run_dir / "afile").write_text("keep\n")
    name = "lw.npy" if option == "--save-log-weights" else "out.csv"
    before = _files(run_dir)
    message = _one_error_line(_estimate(option, f"afile/sub/{name}"))
    assert message == f"'afile' is not a directory, so 'afile/sub/{name}' cannot be created; choose another location"
    assert _files(run_dir) == before and (run_dir / "afile").read_text() == "keep\n"


def test_a_report_out_below_a_regular_file_is_the_same_sentence(run_dir):
    (run_dir / "afile").write_text("keep\n")
    message = _one_error_line(_invoke("report", "--log-weights", "lw.npy", "--ks", "1,4", "--out", "afile/report"))
    assert message.startswith("'afile' is not a directory, so 'afile/report/") and message.endswith(
        "cannot be created; choose another location")


@pytest.mark.filterwarnings("ignore::evalkit.errors.WeightWarning")
def test_python_save_and_the_cli_say_the_same(run_dir):
    (run_dir / "afile").write_text("keep\n")
    result = evalkit.estimate(np.load(run_dir / "lw.npy"), estimators=["iwae"])
    with pytest.raises(OutputError) as info:
        result.save("afile/x/out.json")
    assert _one_error_line(_estimate("-o", "afile/x/out.json")) == str(info.value)


def test_an_unwritable_ancestor_is_refused_before_any_work(run_dir, monkeypatch):
    import evalkit.atomic

    (run_dir / "locked").mkdir()
    if os.geteuid() != 0:
        (run_dir / "locked").chmod(0o555)
    else:  # root writes anywhere: chmod would not bite, so say the directory is not writable
        real_access = os.access
        monkeypatch.setattr(evalkit.atomic.os, "access",
                            lambda path, mode: False if Path(path).name == "locked" else real_access(path, mode))
    try:
        message = _one_error_line(_estimate("-o", "locked/new/out.json"))
        assert message == ("directory 'locked' is not writable, so 'locked/new/out.json' cannot be created; "
                           "choose another location")
        assert list((run_dir / "locked").iterdir()) == []
    finally:
        (run_dir / "locked").chmod(0o755)


def test_a_failed_run_leaves_neither_the_directories_it_made_nor_the_file(run_dir):
    before = _files(run_dir)
    result = _estimate("-o", "new/a/out.json", "--per-example", "/dev/full", "--overwrite")
    assert result.exit_code == 1 and "cannot write '/dev/full'" in result.output
    assert _files(run_dir) == before  # no new/, no new/a/, no out.json


@pytest.mark.filterwarnings("ignore::evalkit.errors.WeightWarning")
def test_a_failing_python_save_removes_the_directories_it_made(run_dir, monkeypatch):
    import evalkit.atomic

    result = evalkit.estimate(np.load(run_dir / "lw.npy"), estimators=["iwae"])

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    before = _files(run_dir)
    with monkeypatch.context() as patch:
        patch.setattr(evalkit.atomic.os, "fsync", broken_fsync)
        with pytest.raises(OutputError, match="cannot write 'runs/x/out.json' \\(Input/output error\\)"):
            result.save("runs/x/out.json")
    assert _files(run_dir) == before
    assert result.save("runs/x/out.json") == Path("runs/x/out.json") and (run_dir / "runs" / "x" / "out.json").is_file()


def test_an_interrupted_group_removes_the_directories_it_made(tmp_path):
    from evalkit.atomic import atomic_write_text, output_group

    with pytest.raises(KeyboardInterrupt):
        with output_group() as group:
            atomic_write_text(tmp_path / "a" / "b" / "one.txt", "1", group=group)
            atomic_write_text(tmp_path / "a" / "two.txt", "2", group=group)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
