"""Outputs that respect the file system (issue 16): symlinks, FIFOs, devices, stdout, full disks.

Each test names what would go wrong with a plain temporary-file-and-rename: a symlink replaced by
a regular file, a device node or a FIFO replaced by a file, a full disk leaving a partial file.
"""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from evalkit_cli.main import main
from evalkit.atomic import atomic_directory, atomic_path, atomic_write_text, check_writable
from evalkit.errors import OutputError

ROOT = Path(__file__).resolve().parent.parent


def _tmp_files(directory: Path):
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith(".tmp"))


def test_symlink_is_followed_target_replaced_link_kept(tmp_path):
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "2026-11-24.json"
    target.write_text("old\n")
    link = tmp_path / "latest.json"
    link.symlink_to(Path("runs") / "2026-11-24.json")
    atomic_write_text(link, "new\n", overwrite=True)
    assert link.is_symlink() and os.readlink(link) == str(Path("runs") / "2026-11-24.json")
    assert target.read_text() == "new\n"
    assert _tmp_files(tmp_path) == []


def test_existing_symlink_target_still_needs_overwrite(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("keep")
    (tmp_path / "l.txt").symlink_to(target)
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        atomic_write_text(tmp_path / "l.txt", "new")
    assert target.read_text() == "keep"


def test_dangling_symlink_gets_its_target_created(tmp_path):
    link = tmp_path / "l.txt"
    link.symlink_to(tmp_path / "made.txt")
    atomic_write_text(link, "x")
    assert link.is_symlink() and (tmp_path / "made.txt").read_text() == "x"


def test_symlink_loop_is_a_clean_error(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(OutputError, match="is a symbolic link loop; give a file name"):
        atomic_write_text(tmp_path / "a", "x", overwrite=True)


def test_fifo_is_written_directly_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo, "rb").read()))
    reader.start()
    atomic_write_text(fifo, "through the pipe\n")  # no --overwrite needed: nothing is replaced
    reader.join(timeout=10)
    assert received == [b"through the pipe\n"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert _tmp_files(tmp_path) == []


def test_writer_that_needs_a_file_name_can_write_to_a_fifo(tmp_path):
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo, "rb").read()))
    reader.start()
    with atomic_path(fifo) as tmp:
        np.save(tmp, np.arange(3.0))
    reader.join(timeout=10)
    assert received[0].startswith(b"\x93NUMPY")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_dev_full_is_a_clean_error_and_stays_a_device():
    with pytest.raises(OutputError) as info:
        atomic_write_text("/dev/full", "x" * 10_000, overwrite=True)
    assert str(info.value) == ("cannot write '/dev/full' (No space left on device); free space or choose another "
                               "location, nothing was written there")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_dev_null_is_written_without_replacing_it():
    atomic_write_text("/dev/null", "discarded")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_directory_and_socket_are_refused(tmp_path):
    with pytest.raises(OutputError, match="is a directory; give a file name"):
        atomic_write_text(tmp_path, "x", overwrite=True)
    sock_path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(sock_path))
        with pytest.raises(OutputError, match="is a socket, not a regular file; evalkit replaces only regular files"):
            check_writable(sock_path, overwrite=True)
        assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
    finally:
        sock.close()


@pytest.fixture()
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (a really full file system); skipped where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_full_file_system_leaves_no_partial_file_and_keeps_the_old_one(small_tmpfs):
    target = small_tmpfs / "big.bin"
    with pytest.raises(OutputError, match=r"\(No space left on device\)"):
        atomic_write_text(target, "x" * 200_000)
    assert not target.exists() and list(small_tmpfs.iterdir()) == []
    target.write_text("old")
    with pytest.raises(OutputError):
        atomic_write_text(target, "x" * 200_000, overwrite=True)
    assert target.read_text() == "old" and [p.name for p in small_tmpfs.iterdir()] == ["big.bin"]


def test_new_directory_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "deep" / "report"
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(out) as stage:
            (stage / "a.txt").write_text("a")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []  # the staging directory and the parent made for it are gone
    with atomic_directory(out) as stage:
        assert stage != out and not out.exists()
        (stage / "a.txt").write_text("a")
    assert (out / "a.txt").read_text() == "a" and [p.name for p in out.parent.iterdir()] == ["report"]


# --- the CLI -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lw(tmp_path_factory):
    d = tmp_path_factory.mktemp("targets")
    np.save(d / "lw.npy", np.random.default_rng(0).normal(size=(30, 20)))
    return d


def test_cli_dev_full_is_one_clean_error_exit_1(lw):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    result = CliRunner().invoke(main, ["estimate", str(ROOT / "examples" / "digits_iwae.pt"), "--data", "digits",
                                       "--binarize", "bernoulli", "-k", "4", "-q", "-o", "/dev/full", "--overwrite"])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [
        "Error: cannot write '/dev/full' (No space left on device); free space or choose another location, "
        "nothing was written there"]
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_cli_dash_is_stdout(lw, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["estimate", str(ROOT / "examples" / "digits_iwae.pt"), "--data", "digits",
                                       "--binarize", "bernoulli", "-k", "4", "-q", "-o", "-", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("estimator,k,estimate,se_data,se_mc,n,mean_ess_fraction")
    assert list(tmp_path.iterdir()) == []  # no file called '-'


def test_cli_dev_stdout_in_a_real_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "evalkit", "estimate", str(ROOT / "examples" / "digits_iwae.pt"),
                           "--data", "digits", "--binarize", "bernoulli", "-k", "4", "-q", "--format", "csv",
                           "-o", "/dev/stdout", "--overwrite"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("estimator,k,estimate,se_data,se_mc,n,mean_ess_fraction")
    assert list(tmp_path.iterdir()) == []


def test_cli_symlink_output_keeps_the_link(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "today.csv").write_text("old\n")
    os.symlink("runs/today.csv", "latest.csv")
    result = CliRunner().invoke(main, ["estimate", str(ROOT / "examples" / "digits_iwae.pt"), "--data", "digits",
                                       "--binarize", "bernoulli", "-k", "4", "-q", "-o", "latest.csv", "--overwrite",
                                       "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert os.path.islink("latest.csv")
    assert (tmp_path / "runs" / "today.csv").read_text().startswith("estimator,k,estimate")


def test_one_column_sweep_prints_no_matplotlib_warning(lw, tmp_path):
    np.save(tmp_path / "one.npy", np.random.default_rng(1).normal(size=(20, 1)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "evalkit", "sweep", "--log-weights", "one.npy", "--out", "out"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "No artists with labels" not in proc.stderr and "UserWarning" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if not line.startswith("note: ")] == ["wrote out"]
    assert (tmp_path / "out" / "bias.png").exists()


def test_check_outputs_refuses_two_outputs_on_stdout(tmp_path, monkeypatch):
    from evalkit.output.files import check_outputs

    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match=r"^two outputs write to stdout \(-, /dev/stdout\); give all but one a file name$"):
        check_outputs({"output": "-", "per_example": "/dev/stdout"})
    with pytest.raises(OutputError, match=r"two outputs write to stdout \(-, -\)"):
        check_outputs({"output": "-", "per_example": "-"})
    check_outputs({"output": "-", "per_example": "rows.csv"})  # one on stdout is fine
    assert list(tmp_path.iterdir()) == []


def test_check_outputs_names_a_symlink_loop_before_comparing_paths(tmp_path):
    from evalkit.output.files import check_outputs

    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(OutputError, match="is a symbolic link loop; give a file name"):
        check_outputs({"output": str(tmp_path / "a"), "per_example": str(tmp_path / "x.csv")}, overwrite=True)


def test_cli_two_dashes_is_a_usage_error_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["estimate", str(ROOT / "examples" / "digits_iwae.pt"), "--data", "digits",
                                       "--binarize", "bernoulli", "-k", "4", "-q", "-o", "-", "--per-example", "-"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        "Error: --output '-' and --per-example '-' both write to stdout; give one of them a file name")
    assert list(tmp_path.iterdir()) == []
