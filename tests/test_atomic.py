"""Atomic outputs: every file evalkit writes appears whole or not at all (evalkit/atomic.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from evalkit import atomic
from evalkit.atomic import atomic_path, atomic_write_bytes, atomic_write_text, check_writable
from evalkit.errors import OutputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_write_text_creates_the_whole_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    assert atomic_write_text(target, "héllo\n") == target
    assert target.read_bytes() == "héllo\n".encode()
    assert leftovers(tmp_path) == []


def test_existing_file_is_refused_unless_overwrite_and_left_untouched(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(OutputError) as info:
        atomic_write_text(target, "new")
    assert str(info.value) == (
        f"output file {str(target)!r} already exists; pass --overwrite (overwrite=True) to replace it"
    )
    assert target.read_text() == "old"
    atomic_write_text(target, "new", overwrite=True)
    assert target.read_text() == "new"
    assert leftovers(tmp_path) == []


def test_error_inside_the_writer_leaves_no_file_and_keeps_the_old_one(tmp_path):
    fresh = tmp_path / "fresh.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(fresh) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert not fresh.exists()
    old = tmp_path / "old.bin"
    old.write_bytes(b"complete")
    with pytest.raises(RuntimeError):
        with atomic_path(old, overwrite=True) as tmp:
            tmp.write_bytes(b"ha")
            raise RuntimeError("writer died")
    assert old.read_bytes() == b"complete"
    assert leftovers(tmp_path) == []


def test_failed_rename_leaves_no_file(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    target = tmp_path / "out.bin"
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"x" * 1000)
    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_process_killed_mid_write_leaves_no_partial_output(tmp_path):
    # The child writes half the payload and dies without any cleanup (os._exit, as a SIGKILL or
    # power loss would): the destination must not exist, at most a hidden .tmp file does.
    target = tmp_path / "result.json"
    child = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {ROOT!r})
        from evalkit.atomic import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b'{{"half": ')
                fh.flush()
                os._exit(9)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], cwd=ROOT)
    assert proc.returncode == 9
    assert not target.exists()
    assert all(name.startswith(".result.json.") for name in leftovers(tmp_path))


def test_temporary_is_a_hidden_sibling_so_the_rename_stays_on_one_file_system(tmp_path):
    target = tmp_path / "sub" / "x.txt"
    target.parent.mkdir()
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.startswith(".x.txt.") and tmp.name.endswith(".tmp")
        tmp.write_text("ok")
    assert target.read_text() == "ok"


def test_check_writable_messages(tmp_path, monkeypatch):
    missing = tmp_path / "no" / "such" / "out.txt"
    with pytest.raises(OutputError) as info:
        check_writable(missing)
    assert str(info.value) == f"output directory {str(missing.parent)!r} does not exist; create it first"
    (tmp_path / "adir").mkdir()
    with pytest.raises(OutputError, match=r"is a directory; give a file name$"):
        check_writable(tmp_path / "adir", overwrite=True)
    # Root can write anywhere, so simulate a read-only directory.
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: False)
    with pytest.raises(OutputError) as info:
        check_writable(tmp_path / "out.txt")
    assert str(info.value) == f"output directory {str(tmp_path)!r} is not writable; choose another location"
    assert list(tmp_path.glob("out.txt*")) == []
