"""Sizes that cannot fit are refused before allocation, in one sentence (issue 16)."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from evalkit_cli.main import main
from evalkit.errors import ResourceError
from evalkit.sampling import sizes
from evalkit.sampling.memory import format_bytes

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ["estimate", str(ROOT / "examples" / "digits_iwae.pt"), "--data", "digits", "--binarize", "bernoulli"]


def test_impossible_k_is_one_line_naming_size_budget_and_way_out(tmp_path, monkeypatch):
    monkeypatch.setattr(sizes, "available_memory", lambda device: 16 * 2**30)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, DIGITS + ["-k", "1000000000", "--memory-budget", "1MiB", "-o", "out.txt"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    # 32 datapoints (one block) x 1e9 samples x 8 bytes; 16 GiB / (32 * 8) = 67108864 columns fit.
    assert result.stderr.splitlines() == [
        f"Error: the log-weights of 32 datapoints at k=1000000000 need {format_bytes(32 * 10**9 * 8)} "
        "([32, 1000000000] float64), more than the 1.0 MiB memory budget and the 16.0 GiB of free memory on this "
        "machine allow; lower k (about 67108864 fits), or run on a machine with more memory."]
    assert list(tmp_path.iterdir()) == []


def test_cache_matrix_too_big_is_refused_and_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(sizes, "available_memory", lambda device: 2**30)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, DIGITS + ["-k", "1000000", "--cache", "c", "-q"])
    assert result.exit_code == 1, result.output
    message = result.stderr.strip()
    n = int(message.split("all ")[1].split(" ")[0])
    assert message.startswith(f"Error: the cached log-weights of all {n} datapoints at k=1000000 need "
                              f"{format_bytes(n * 10**6 * 8)}")
    assert message.endswith(f"lower k (about {2**30 // (n * 8)} fits), or drop --cache (cache=None): without it "
                            "the statistics stream over blocks of data.")
    assert "\n" not in message and not (tmp_path / "c").exists()


def test_one_datapoint_too_wide_is_named(monkeypatch):
    monkeypatch.setattr(sizes, "available_memory", lambda device: 1000)
    with pytest.raises(ResourceError, match=r"\(one datapoint's k columns alone need 7.8 KiB\)"):
        sizes.check_matrix_fits(3, 1000, what="x")


def test_limit_is_free_memory_or_a_larger_explicit_budget(monkeypatch):
    monkeypatch.setattr(sizes, "available_memory", lambda device: 8000)
    assert sizes.check_matrix_fits(10, 100, what="x") == 8000  # exactly fits
    with pytest.raises(ResourceError):
        sizes.check_matrix_fits(10, 101, what="x")
    assert sizes.check_matrix_fits(10, 101, what="x", budget=10**6) == 8080  # a budget may count swap
