"""Atomic outputs: every file evalkit writes appears whole or not at all (evalkit/atomic.py)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

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
    with pytest.raises(OutputError, match=r"\(No space left on device\); free space or choose another location"):
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
    assert check_writable(missing) == missing  # missing directories are created on writing
    assert not (tmp_path / "no").exists()  # ... not by the check
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError) as info:
        check_writable(tmp_path / "file" / "such" / "out.txt")
    assert str(info.value) == (f"{str(tmp_path / 'file')!r} is not a directory, so "
                               f"{str(tmp_path / 'file' / 'such' / 'out.txt')!r} cannot be created; choose another location")
    (tmp_path / "adir").mkdir()
    with pytest.raises(OutputError, match=r"is a directory; give a file name$"):
        check_writable(tmp_path / "adir", overwrite=True)
    # Root can write anywhere, so simulate a read-only directory.
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: False)
    with pytest.raises(OutputError) as info:
        check_writable(tmp_path / "out.txt")
    assert str(info.value) == f"output directory {str(tmp_path)!r} is not writable; choose another location"
    assert list(tmp_path.glob("out.txt*")) == []


# --- every writer in the package goes through atomic_path -------------------------------------

WRITERS = {"write_text", "write_bytes", "savefig", "save", "save_file", "to_csv", "to_json", "to_parquet"}


def _writes_outside_atomic(source: str):
    """Calls that write a file (open(..., 'w'), .write_text, np.save, torch.save, savefig...) that
    are neither lexically inside ``with atomic_path(...)`` nor aimed at an in-memory ``buffer``."""
    tree = ast.parse(source)
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node

    def inside_atomic(node):
        while node in parents:
            node = parents[node]
            if isinstance(node, ast.With) and any(
                isinstance(item.context_expr, ast.Call) and getattr(item.context_expr.func, "id", None) == "atomic_path"
                for item in node.items
            ):
                return True
        return False

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name == "open":
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
            writes = isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax+")
        elif name == "save" and getattr(getattr(func, "value", None), "id", None) not in ("np", "numpy", "torch"):
            writes = False  # a method of evalkit's own (SweepResult.save) that writes through report.py
        elif name in WRITERS:
            # DataFrame.to_csv() / to_json() with no path return text; np/torch.save need a target.
            writes = bool(node.args) or any(k.arg in ("path", "path_or_buf", "fname", "f") for k in node.keywords)
        else:
            writes = False
        if not writes:
            continue
        target = node.args[0] if node.args else None
        if name in ("save", "save_file") and len(node.args) >= 2:
            torch_save = name == "save" and getattr(func.value, "id", "") == "torch"
            target = node.args[1] if torch_save or name == "save_file" else target
        if isinstance(target, ast.Name) and target.id == "buffer":
            continue
        if isinstance(func, ast.Attribute) and name in ("write_text", "write_bytes") and not node.args:
            continue
        if not inside_atomic(node):
            found.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
    return found


@pytest.mark.parametrize(
    "path",
    sorted(p for p in [*Path(ROOT, "evalkit").rglob("*.py"), *Path(ROOT, "cli").rglob("*.py")]
           if p.name != "atomic.py"),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_file_write_in_the_package_is_atomic(path):
    assert _writes_outside_atomic(path.read_text(encoding="utf-8")) == []


def test_the_write_finder_finds_plain_writes():
    source = textwrap.dedent(
        """
        def bad(path, frame, fig, arr):
            open(path, "w").write("x")
            path.write_text("x")
            np.save(path, arr)
            fig.savefig(path)
            frame.to_csv(path)
            torch.save(arr, path)
            with atomic_path(path) as tmp:
                tmp.write_text("fine")
            np.save(buffer, arr)
            text = frame.to_csv(index=False)
        """
    )
    assert len(_writes_outside_atomic(source)) == 6
