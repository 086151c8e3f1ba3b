"""The bad-input table (docs/errors.md), one test per row.

Every row runs the CLI in-process (click's CliRunner) and checks the whole contract:

* the exit code: 2 for usage errors the CLI can check itself, 1 for bad inputs the library finds,
  130 / 143 for Ctrl-C / SIGTERM;
* the message: one line ``Error: <what is wrong>; <how to fix it>`` (``interrupted; ...`` for an
  interrupt), with the exact fragments below;
* no traceback (tests at the end check that ``--debug`` shows one, in a real subprocess);
* no output: the ``-o`` file, the ``--per-example`` file, the ``--cache`` directory and the
  sweep's ``--out`` directory do not exist afterwards.

``test_table_and_tests_agree`` keeps docs/errors.md and this file in step: every row of the
table has a case here and every case a row there.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from evalkit_cli.main import main

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "errors.md"
FACTORY_MODULE = "evalkit_bad_input_factories"

FACTORY_SOURCE = textwrap.dedent(
    '''
    """Factories for tests/test_bad_inputs.py."""
    import torch
    from torch import nn

    from evalkit.models import MLPVAE


    def build():
        torch.manual_seed(0)
        return MLPVAE(6, 2, (5,))


    def build_wider():
        return MLPVAE(6, 2, (7,))


    def build_deeper():
        return MLPVAE(6, 2, (5, 5))


    not_callable = 3


    class ConstantModel(nn.Module):
        """Log-weight 0, except `value` for datapoints whose first pixel is 1."""

        noise_shape = (2,)
        data_dim = 6
        requires_binary_data = False

        def __init__(self, value):
            super().__init__()
            self.value = value
            self.offset = nn.Parameter(torch.zeros(1))

        def log_weights(self, x, noise):
            out = (noise.sum(-1) * 0 + self.offset).double()
            bad = (x[:, 0] > 0.5)[:, None].expand_as(out)
            return torch.where(bad, torch.full_like(out, self.value), out)


    def nan_model():
        return ConstantModel(float("nan"))


    class MisbehavingModel(ConstantModel):
        """Raises an exception, a Ctrl-C or a SIGTERM from inside log_weights."""

        def __init__(self, how):
            super().__init__(0.0)
            self.how = how

        def log_weights(self, x, noise):
            import os
            import signal
            import time

            if self.how == "raises":
                raise ValueError("model exploded")
            if self.how == "ctrl-c":
                raise KeyboardInterrupt
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                raise RuntimeError("no SIGTERM handler is installed; the test would kill pytest")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
            raise RuntimeError("SIGTERM was not delivered")


    def raising_model():
        return MisbehavingModel("raises")


    def ctrl_c_model():
        return MisbehavingModel("ctrl-c")


    def sigterm_model():
        return MisbehavingModel("sigterm")


    def inf_model():
        return ConstantModel(float("inf"))
    '''
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints and data files, good and bad, in one directory (also on sys.path)."""
    d = tmp_path_factory.mktemp("bad_inputs")
    (d / f"{FACTORY_MODULE}.py").write_text(FACTORY_SOURCE)
    sys.path.insert(0, str(d))
    try:
        import evalkit

        factories = __import__(FACTORY_MODULE)
        model = factories.build()
        evalkit.save_model(model, d / "good.pt")
        torch.save(model.state_dict(), d / "state_dict.pt")
        torch.save({**model.state_dict(), "extra.weight": torch.zeros(2)}, d / "state_dict_extra.pt")
        torch.save(factories.nan_model().state_dict(), d / "constant.pt")
        torch.save(model, d / "pickled_module.pt")
        torch.save({"format": "evalkit", "format_version": 1, "model": "Transformer", "config": {}, "state_dict": {}},
                   d / "unknown_architecture.pt")
        payload = (d / "good.pt").read_bytes()
        (d / "truncated.pt").write_bytes(payload[: len(payload) // 2])
        (d / "notes.txt").write_text("these are not weights\n")

        rng = np.random.default_rng(0)
        binary = (rng.random((20, 6)) < 0.4).astype(np.float32)
        binary[[3, 8, 9, 11, 16, 19], 0] = 1.0
        binary[[0, 1, 2, 4, 5, 6, 7, 10, 12, 13, 14, 15, 17, 18], 0] = 0.0
        np.save(d / "binary.npy", binary)
        np.save(d / "five_columns.npy", binary[:, :5])
        with_nan = binary.copy()
        with_nan[3, 2] = np.nan
        np.save(d / "with_nan.npy", with_nan)
        np.save(d / "grey.npy", rng.random((20, 6)).astype(np.float32))
        np.save(d / "grey_255.npy", (255 * rng.random((20, 6))).astype(np.float32))
        np.save(d / "empty.npy", np.zeros((0, 6), np.float32))
        (d / "empty.csv").write_text("")
        np.save(d / "reference_19.npy", np.zeros(19))
        (d / "not_a_cache").mkdir()
        (d / "not_a_cache" / "notes.txt").write_text("mine")
        yield d
    finally:
        sys.path.remove(str(d))
        sys.modules.pop(FACTORY_MODULE, None)


@dataclass
class Case:
    """One row of the table: the arguments, the exit code and the message fragments."""

    id: str
    args: List[str]
    exit_code: int
    fragments: List[str]
    setup: Optional[Callable] = None  # (files dir, monkeypatch) -> None, run before the command
    skip: Optional[Tuple[bool, str]] = None
    outputs: bool = True  # add -o/--per-example/--cache (estimate) or --out (sweep) and check they stay absent
    extra: List[str] = field(default_factory=list)
    prefix: str = "Error: "  # "interrupted; " for Ctrl-C / SIGTERM (exit 130 / 143)


def est(*args: str) -> List[str]:
    return ["estimate", *args]


def swp(*args: str) -> List[str]:
    return ["sweep", *args]


def _make_cache(d: Path, monkeypatch) -> None:
    result = CliRunner().invoke(main, est("good.pt", "--data", "binary.npy", "-k", "3", "--cache", "made_for_k3", "-q"))
    assert result.exit_code == 0, result.output


def _read_only(d: Path, monkeypatch) -> None:
    # The tests run as root, which can write anywhere; simulate a read-only directory instead.
    import evalkit.atomic

    real_access = os.access
    monkeypatch.setattr(evalkit.atomic.os, "access",
                        lambda path, mode: False if Path(path).name == "read_only" else real_access(path, mode))
    (d / "read_only").mkdir(exist_ok=True)


def _a_file(d: Path, monkeypatch) -> None:
    (d / "a_file").write_text("not a directory\n")


def _existing(d: Path, monkeypatch) -> None:
    (d / "exists.txt").write_text("keep me\n")


def _directory(d: Path, monkeypatch) -> None:
    (d / "a_directory").mkdir(exist_ok=True)


def _socket(d: Path, monkeypatch) -> None:
    import socket

    if not (d / "s.sock").exists():
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(d / "s.sock"))  # the socket file stays after the socket is closed


def _block_device(d: Path, monkeypatch) -> None:
    import stat

    if not os.path.lexists(d / "blk"):
        try:
            os.mknod(d / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
        except OSError as exc:
            pytest.skip(f"cannot make a block device node here ({exc.strerror})")


def _symlink_loop(d: Path, monkeypatch) -> None:
    if not os.path.lexists(d / "loop_a"):
        os.symlink("loop_b", d / "loop_a")
        os.symlink("loop_a", d / "loop_b")


def _dev_full(d: Path, monkeypatch) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")


def _sixteen_gib_free(d: Path, monkeypatch) -> None:
    from evalkit.sampling import sizes

    monkeypatch.setattr(sizes, "available_memory", lambda device: 16 * 2**30)


CASES = [
    # --- checkpoints
    Case("checkpoint-missing", est("missing.pt", "--data", "binary.npy", "-k", "4"), 1,
         ["checkpoint missing.pt does not exist", "check the path"]),
    Case("checkpoint-not-torch", est("notes.txt", "--data", "binary.npy", "-k", "4"), 1,
         ["cannot read notes.txt with torch.load", "is it a PyTorch checkpoint?"]),
    Case("checkpoint-truncated", est("truncated.pt", "--data", "binary.npy", "-k", "4"), 1,
         ["cannot read truncated.pt with torch.load (", "is it a PyTorch checkpoint?"]),
    Case("state-dict-missing-keys",
         est("state_dict.pt", "--model", f"{FACTORY_MODULE}:build_deeper", "--data", "binary.npy", "-k", "4"), 1,
         ["the state_dict in state_dict.pt is missing keys ['encoder.2.weight', 'encoder.2.bias'",
          "check that the factory builds the architecture the checkpoint was trained with"]),
    Case("state-dict-unexpected-keys",
         est("state_dict_extra.pt", "--model", f"{FACTORY_MODULE}:build", "--data", "binary.npy", "-k", "4"), 1,
         ["the state_dict in state_dict_extra.pt has unexpected keys ['extra.weight']",
          "check that the factory builds the architecture"]),
    Case("state-dict-shape-mismatch",
         est("state_dict.pt", "--model", f"{FACTORY_MODULE}:build_wider", "--data", "binary.npy", "-k", "4"), 1,
         ["has 7 tensors of the wrong shape, e.g. 'encoder.0.weight' is (5, 6) but the model expects (7, 6)",
          "build the model with the sizes it was trained with"]),
    Case("unknown-architecture", est("unknown_architecture.pt", "--data", "binary.npy", "-k", "4"), 1,
         ["names model class 'Transformer', which this evalkit does not have",
          "upgrade evalkit or load the weights with factory="]),
    Case("state-dict-without-factory", est("state_dict.pt", "--data", "binary.npy", "-k", "4"), 1,
         ["in no layout evalkit recognises", "(CLI: --model package.module:function)"]),
    Case("factory-malformed", est("state_dict.pt", "--model", FACTORY_MODULE, "--data", "binary.npy", "-k", "4"), 2,
         [f"Invalid value for '--model': '{FACTORY_MODULE}' is not MODULE:FUNCTION",
          "write it like --model mypackage.models:build_vae"]),
    Case("factory-module-not-importable",
         est("state_dict.pt", "--model", "no_such_module:build", "--data", "binary.npy", "-k", "4"), 1,
         ["cannot import module 'no_such_module' from factory='no_such_module:build'",
          "install the package or add its directory to PYTHONPATH"]),
    Case("factory-function-missing",
         est("state_dict.pt", "--model", f"{FACTORY_MODULE}:nope", "--data", "binary.npy", "-k", "4"), 1,
         [f"module '{FACTORY_MODULE}' has no attribute 'nope'", "check the name"]),
    Case("factory-not-callable",
         est("state_dict.pt", "--model", f"{FACTORY_MODULE}:not_callable", "--data", "binary.npy", "-k", "4"), 1,
         [f"factory='{FACTORY_MODULE}:not_callable' names a int, not a function or class"]),
    Case("pickle-without-opt-in", est("pickled_module.pt", "--data", "binary.npy", "-k", "4"), 1,
         ["contains pickled Python objects that safe loading refuses (it references evalkit.models.vae.MLPVAE)",
          "if you trust the file, pass allow_pickle=True (CLI: --allow-pickle)"]),
    # --- data
    Case("data-missing", est("good.pt", "--data", "missing.npy", "-k", "4"), 1,
         ["data file missing.npy does not exist", "give a .npy, .npz, .pt or .csv path, or 'digits'"]),
    Case("data-wrong-dimension", est("good.pt", "--data", "five_columns.npy", "-k", "4"), 1,
         ["the data have 5 values per datapoint but the model expects data_dim=6",
          "load the dataset the model was trained on"]),
    Case("data-nan", est("good.pt", "--data", "with_nan.npy", "-k", "4"), 1,
         ["the data contain NaN or infinite values in rows [3] (1 rows)", "remove or fix them"]),
    Case("data-not-binary-for-bernoulli", est("good.pt", "--data", "grey.npy", "-k", "4"), 1,
         ["the model has a Bernoulli decoder but rows [0, 1, 2, 3, 4] and 15 more (20 rows) are not binary",
          "load the data with binarize='bernoulli'"]),
    Case("data-empty", est("good.pt", "--data", "empty.npy", "-k", "4"), 1,
         ["empty.npy holds no datapoints", "check the file"]),
    Case("data-split-missing", est("good.pt", "--data", "binary.npy", "--split", "train", "-k", "4"), 1,
         ["binary.npy holds one array, a single dataset", "read it with the test or all split (--split test or --split all"]),
    Case("binarize-out-of-range",
         est("good.pt", "--data", "grey_255.npy", "--binarize", "bernoulli", "-k", "4"), 1,
         ["binarize='bernoulli' needs values in [0, 1], got range [", "rescale the data first"]),
    # --- K and estimators
    Case("k-not-positive", est("good.pt", "--data", "binary.npy", "-k", "0"), 2,
         ["Invalid value for '-k': 0 is not a positive number of samples per datapoint", "use e.g. -k 5000"]),
    Case("k-negative", est("good.pt", "--data", "binary.npy", "-k", "-5"), 2,
         ["Invalid value for '-k': -5 is not a positive number of samples per datapoint"]),
    Case("jvi-order-not-below-k", est("good.pt", "--data", "binary.npy", "-k", "3", "-e", "jvi3"), 1,
         ["estimator 'jvi3' needs at least 4 samples per datapoint (-k, or k in Python), got 3", "give more or choose a lower order"]),
    Case("unknown-estimator", est("good.pt", "--data", "binary.npy", "-k", "4", "-e", "iwea"), 1,
         ["unknown estimator 'iwea'; did you mean 'iwae'?", "Known names: elbo, iwae"]),
    # --- device, memory, model output
    Case("cuda-without-gpu", est("good.pt", "--data", "binary.npy", "-k", "4", "--device", "cuda"), 1,
         ["device='cuda' was requested but torch sees no CUDA GPU", "pass device='cpu'"],
         skip=(torch.cuda.is_available(), "a GPU is present")),
    Case("memory-budget-too-small",
         est("good.pt", "--data", "binary.npy", "-k", "4", "--memory-budget", "1KB"), 1,
         ["memory_budget of 1000 B is below the ", "that one sample per datapoint needs",
          "raise memory_budget to at least "]),
    Case("memory-budget-malformed",
         est("good.pt", "--data", "binary.npy", "-k", "4", "--memory-budget", "12XB"), 2,
         ["Invalid value for '--memory-budget': '12XB' is not a memory size", "write it like 512MB or 4GiB"]),
    Case("model-nan-log-weights",
         est("constant.pt", "--model", f"{FACTORY_MODULE}:nan_model", "--data", "binary.npy", "-k", "4"), 1,
         # With --cache the first failing shard holds datapoints 3..5; without, the whole batch is named.
         ["the model returned NaN log-weights for datapoints with dataset indices [3] (1 datapoints in the batch",
          "check the model's parameters and these datapoints"]),
    Case("model-inf-log-weights",
         est("constant.pt", "--model", f"{FACTORY_MODULE}:inf_model", "--data", "binary.npy", "-k", "4"), 1,
         ["the model returned +inf log-weights for datapoints with dataset indices [3] (1 datapoints in the batch",
          "an importance weight cannot be infinite"]),
    # --- outputs
    Case("output-directory-not-writable",
         est("good.pt", "--data", "binary.npy", "-k", "4", "-o", "read_only/out.txt"), 1,
         ["output directory 'read_only' is not writable", "choose another location"], setup=_read_only, outputs=False),
    Case("output-directory-is-a-file", est("good.pt", "--data", "binary.npy", "-k", "4", "-o", "a_file/out.txt"), 1,
         ["'a_file' is not a directory, so 'a_file/out.txt' cannot be created", "choose another location"],
         setup=_a_file, outputs=False),
    Case("output-file-exists", est("good.pt", "--data", "binary.npy", "-k", "4", "-o", "exists.txt"), 1,
         ["output file 'exists.txt' already exists", "pass --overwrite (overwrite=True) to replace it"],
         setup=_existing, outputs=False),
    Case("outputs-name-one-file",
         est("good.pt", "--data", "binary.npy", "-k", "4", "-o", "same.csv", "--per-example", "same.csv"), 2,
         ["--output and --per-example name the same file 'same.csv'", "give each its own name"], outputs=False,
         extra=["same.csv"]),
    Case("log-weights-suffix",
         est("good.pt", "--data", "binary.npy", "-k", "4", "--save-log-weights", "log_w.csv"), 2,
         ["Invalid value for '--save-log-weights': 'log_w.csv' must end in .npy or .pt"], extra=["log_w.csv"]),
    Case("unknown-format", est("good.pt", "--data", "binary.npy", "-k", "4", "--format", "yaml"), 2,
         ["Invalid value for '--format': 'yaml' is not one of 'table', 'json', 'csv', 'markdown', 'latex'"]),
    Case("batch-size-not-positive", est("good.pt", "--data", "binary.npy", "-k", "4", "--batch-size", "0"), 2,
         ["Invalid value for '--batch-size': 0 is not in the range x>=1"]),
    Case("seed-negative", est("good.pt", "--data", "binary.npy", "-k", "4", "--seed", "-1"), 2,
         ["Invalid value for '--seed': -1 is not in the range 0<=x<=18446744073709551615"]),
    # --- cache
    Case("cache-for-other-inputs",
         est("good.pt", "--data", "binary.npy", "-k", "4", "--cache", "made_for_k3", "-o", "out.txt"), 1,
         ["cache directory 'made_for_k3' was made for a different k (cached k=3; now k=4)",
          "use another --cache directory or delete it"], setup=_make_cache, outputs=False, extra=["out.txt"]),
    Case("cache-directory-not-a-cache",
         est("good.pt", "--data", "binary.npy", "-k", "4", "--cache", "not_a_cache", "-o", "out.txt"), 1,
         ["cache directory 'not_a_cache' is not empty (notes.txt) and has no manifest.json",
          "give an empty or new directory for --cache"], outputs=False,
         extra=["out.txt", "not_a_cache/manifest.json", "not_a_cache/.lock"]),
    # --- sweep
    Case("ks-not-positive", swp("good.pt", "--data", "binary.npy", "--ks", "0,2,4"), 2,
         ["Invalid value for '--ks': every value of --ks must be a positive integer, got 0,2,4"]),
    Case("ks-not-increasing", swp("good.pt", "--data", "binary.npy", "--ks", "4,2"), 2,
         ["Invalid value for '--ks': the values of --ks must be strictly increasing, got 4,2"]),
    Case("ks-not-integers", swp("good.pt", "--data", "binary.npy", "--ks", "1,2,x"), 2,
         ["Invalid value for '--ks': '1,2,x' is not a comma-separated list of integers, e.g. 1,10,100"]),
    Case("reference-length-mismatch",
         swp("good.pt", "--data", "binary.npy", "--ks", "1,2,4", "--reference", "reference_19.npy"), 1,
         ["reference has 19 values for 20 datapoints", "give one number or one value per datapoint"]),
    Case("reference-missing", swp("good.pt", "--data", "binary.npy", "--ks", "1,2,4", "--reference", "nope.npy"), 1,
         ["reference file 'nope.npy' does not exist", "check the path"]),
    # --- found by tests/test_fuzz_cli.py
    Case("data-csv-empty", est("good.pt", "--data", "empty.csv", "-k", "4"), 1,
         ["empty.csv holds no datapoints", "check the file"]),  # and no numpy "input contained no data" warning
    Case("model-raises",
         est("constant.pt", "--model", f"{FACTORY_MODULE}:raising_model", "--data", "binary.npy", "-k", "4"), 1,
         ["ValueError: model exploded (raised in evalkit_bad_input_factories.py, line ", ", in log_weights)",
          "re-run with --debug for the traceback"]),
    # --- outputs that are not regular files, sizes that cannot fit (issue 16)
    Case("output-is-directory", est("good.pt", "--data", "binary.npy", "-k", "4", "-o", "a_directory"), 1,
         ["output path 'a_directory' is a directory", "give a file name"], setup=_directory, outputs=False),
    Case("output-is-socket", est("good.pt", "--data", "binary.npy", "-k", "4", "-o", "s.sock", "--overwrite"), 1,
         ["output path 's.sock' is a socket, not a regular file", "evalkit replaces only regular files, so give a file name"],
         setup=_socket, outputs=False),
    Case("output-is-block-device", est("good.pt", "--data", "binary.npy", "-k", "4", "-o", "blk", "--overwrite"), 1,
         ["output path 'blk' is a block device, not a regular file", "so give a file name"],
         setup=_block_device, outputs=False),
    Case("output-symlink-loop", est("good.pt", "--data", "binary.npy", "-k", "4", "-o", "loop_a", "--overwrite"), 1,
         ["output path 'loop_a' is a symbolic link loop", "give a file name"], setup=_symlink_loop, outputs=False),
    Case("output-device-full", est("good.pt", "--data", "binary.npy", "-k", "4", "-o", "/dev/full", "--overwrite"), 1,
         ["cannot write '/dev/full' (No space left on device)",
          "free space or choose another location, nothing was written there"], setup=_dev_full, outputs=False),
    Case("k-too-large-for-memory",
         est("good.pt", "--data", "binary.npy", "-k", "1000000000", "--memory-budget", "1MiB", "-o", "out.txt"), 1,
         ["the log-weights of 20 datapoints at k=1000000000 need 149.0 GiB ([20, 1000000000] float64), more than "
          "the 1.0 MiB memory budget and the 16.0 GiB of free memory on this machine allow",
          "lower k (about 107374182 fits), or run on a machine with more memory."],
         setup=_sixteen_gib_free, outputs=False, extra=["out.txt"]),
    Case("outputs-both-stdout",
         est("good.pt", "--data", "binary.npy", "-k", "4", "-o", "-", "--per-example", "-"), 2,
         ["--output '-' and --per-example '-' both write to stdout", "give one of them a file name"],
         outputs=False, extra=["-"]),
    Case("summary-and-per-example-on-stdout",
         est("good.pt", "--data", "binary.npy", "-k", "4", "--per-example", "/dev/stdout"), 2,
         ["the summary (stdout without -o) and --per-example '/dev/stdout' both write to stdout"],
         outputs=False, extra=["-"]),
    # --- interrupts: not errors, but the same contract (one line, no traceback, no output)
    Case("interrupted",
         est("constant.pt", "--model", f"{FACTORY_MODULE}:ctrl_c_model", "--data", "binary.npy", "-k", "4",
             "-o", "out.txt"), 130,
         ["interrupted; 0 of 20 datapoints done", "re-run the same command with --cache DIR to continue"],
         outputs=False, extra=["out.txt"], prefix="interrupted; "),
    Case("terminated",
         est("constant.pt", "--model", f"{FACTORY_MODULE}:sigterm_model", "--data", "binary.npy", "-k", "4",
             "-o", "out.txt"), 143,
         ["interrupted; 0 of 20 datapoints done", "re-run the same command with --cache DIR to continue"],
         outputs=False, extra=["out.txt"], prefix="interrupted; "),
]


def _with_outputs(case: Case) -> Tuple[List[str], List[str]]:
    """The command with output options added, and the paths that must not exist afterwards."""
    if not case.outputs:
        return case.args, list(case.extra)
    if case.args[0] == "estimate":
        added = ["-o", "out.txt", "--per-example", "per_example.csv", "--cache", "cache_dir"]
        return case.args + added, ["out.txt", "per_example.csv", "cache_dir", *case.extra]
    return case.args + ["--out", "sweep_dir"], ["sweep_dir", *case.extra]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, files: Path, monkeypatch):
    if case.skip and case.skip[0]:
        pytest.skip(case.skip[1])
    monkeypatch.chdir(files)
    if case.setup is not None:
        case.setup(files, monkeypatch)
    args, must_not_exist = _with_outputs(case)
    before = {p: os.lstat(p).st_mtime_ns for p in files.rglob("*")}  # lstat: the symlink loop has no stat
    result = CliRunner().invoke(main, args + ["--quiet"])
    assert result.exit_code == case.exit_code, result.output
    assert isinstance(result.exception, SystemExit), "an exception escaped the CLI"
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    message = lines[-1]
    assert message.startswith(case.prefix), result.output
    if case.exit_code != 2:
        assert lines == [message], "a library error or an interrupt is exactly one line on stderr"
    else:
        assert lines[0].startswith("Usage: ") and "--help" in lines[1], "usage errors point at --help"
    for fragment in case.fragments:
        assert fragment in message
    assert result.stdout == ""
    for name in must_not_exist:
        assert not (files / name).exists(), f"{name} was created"
    # Nothing that existed was modified (the cache made by a setup step is left as it was, too).
    for path, mtime in before.items():
        assert os.path.lexists(path) and os.lstat(path).st_mtime_ns == mtime, f"{path.name} was modified"
    created = set(files.rglob("*")) - set(before)
    assert not created, f"created {sorted(p.name for p in created)}"


def test_overwrite_replaces_an_existing_output(files: Path, monkeypatch):
    monkeypatch.chdir(files)
    (files / "replace_me.csv").write_text("old\n")
    result = CliRunner().invoke(main, est("good.pt", "--data", "binary.npy", "-k", "4", "-q", "-o", "replace_me.csv",
                                          "--overwrite", "--format", "csv"))
    assert result.exit_code == 0, result.output
    # The summary's columns, then the weight diagnostics (README, "Weight warnings").
    assert (files / "replace_me.csv").read_text().startswith("estimator,k,estimate,se_data,se_mc,n,mean_ess_fraction")
    (files / "replace_me.csv").unlink()


def _table_ids() -> List[str]:
    ids = []
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\|\s*\d+\s*\|\s*`([a-z0-9-]+)`\s*\|", line)
        if match:
            ids.append(match.group(1))
    return ids


def test_table_and_tests_agree():
    ids = _table_ids()
    assert len(ids) == len(set(ids)), "duplicate rows in docs/errors.md"
    assert ids == [case.id for case in CASES], "docs/errors.md and CASES list different rows (or another order)"
    assert len(ids) >= 25


def test_table_rows_give_the_exit_code_tested_here():
    expected = {case.id: case.exit_code for case in CASES}
    checked = []
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\|\s*\d+\s*\|\s*`([a-z0-9-]+)`\s*\|.*\|\s*(\d+)\s*\|", line)
        if match:
            assert int(match.group(2)) == expected[match.group(1)], match.group(1)
            checked.append(match.group(1))
    assert checked == _table_ids()  # every row's exit code was read


# --- the real process: stderr is one line without --debug, a traceback with it --------------


def _run(args: List[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(cwd)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "evalkit", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_no_traceback_without_debug_in_a_real_process(files: Path):
    proc = _run(est("truncated.pt", "--data", "binary.npy", "-k", "4", "-o", "proc_out.txt"), files)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("Error: cannot read truncated.pt with torch.load (")
    assert not (files / "proc_out.txt").exists()


@pytest.mark.slow
def test_debug_shows_the_traceback(files: Path):
    proc = _run(est("truncated.pt", "--data", "binary.npy", "-k", "4", "--debug"), files)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "evalkit.errors.CheckpointError: cannot read truncated.pt with torch.load" in proc.stderr


@pytest.mark.slow
def test_usage_error_exits_2_in_a_real_process(files: Path):
    proc = _run(est("good.pt", "--data", "binary.npy", "-k", "0"), files)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == (
        "Error: Invalid value for '-k': 0 is not a positive number of samples per datapoint; use e.g. -k 5000"
    )
