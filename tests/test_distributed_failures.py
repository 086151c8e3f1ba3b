"""torchrun that fails fast: a failure on any process ends every process at once, with one message.

Each case launches ``torchrun -m evalkit`` with 2 (or 3) CPU processes over gloo and checks
that all of them exit within seconds with the same non-zero code, that evalkit's sentence is
printed once (by rank 0) with no Python traceback through evalkit or the CLI, and that no
process reports gloo's misleading "Connection closed by peer".

Before the fix an output check that failed on rank 0 left the others waiting in the first
collective until torchrun killed them 30 s after SIGTERM (exit -9); the time limit below is
well under those 30 s and well over a start-up on a busy 2-core machine.
"""
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from evalkit.models import IWAE

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = str(REPO / "examples" / "digits_iwae.pt")
WALL_LIMIT_S = 28.0
"""Start to exit of every process; a process left waiting in a collective costs torchrun's 30 s."""


def torchrun(args, cwd, nproc=2, extra_env=None):
    """Run ``torchrun --standalone`` (rendezvous on a free port) with ``nproc`` CPU processes over gloo;
    return (result, seconds from start to the exit of every process)."""
    env = {"PYTHONPATH": f"{REPO}:{cwd}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", **(extra_env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "evalkit", *args]
    start = time.monotonic()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)
    return result, time.monotonic() - start


def worker_exit_codes(output: str) -> list:
    """The exit code of every process, from torchrun's ChildFailedError summary."""
    return [int(code) for code in re.findall(r"^\s*exitcode\s*:\s*(-?\d+)", output, re.MULTILINE)]


def assert_failed_together(result, seconds, sentence, *, nproc=2, code=1):
    output = result.stdout + result.stderr
    assert seconds < WALL_LIMIT_S, f"{seconds:.1f} s\n{output}"
    assert result.returncode != 0, output
    assert output.count(sentence) == 1, output
    assert not re.search(r'File "[^"]*/(evalkit|evalkit_cli|cli)/', output), output  # no traceback through evalkit
    assert "Connection closed by peer" not in output and "Aborted!" not in output, output
    codes = worker_exit_codes(output)
    assert codes == [code] * nproc, output  # every process, with the same code


def estimate(*extra):
    return ["estimate", CHECKPOINT, "--data", "digits", "--binarize", "bernoulli", "-k", "20", "-e", "iwae", *extra]


@pytest.mark.parametrize("nproc", [2, 3])
def test_an_existing_output_ends_every_process_at_once(tmp_path, nproc):
    (tmp_path / "exists.json").write_text("{}")
    result, seconds = torchrun(estimate("-o", "exists.json"), tmp_path, nproc)
    assert_failed_together(result, seconds, "output file 'exists.json' already exists", nproc=nproc)
    assert (tmp_path / "exists.json").read_text() == "{}"
    print(f"existing -o with {nproc} processes: {seconds:.1f} s from start to exit")


def test_an_existing_sweep_directory_ends_every_process_at_once(tmp_path):
    (tmp_path / "runs" / "sweep").mkdir(parents=True)
    (tmp_path / "runs" / "sweep" / "sweep.csv").write_text("kept\n")
    result, seconds = torchrun(["sweep", CHECKPOINT, "--data", "digits", "--binarize", "bernoulli", "--ks", "1,10",
                                "-e", "iwae", "--figures", "png", "--out", "runs/sweep"], tmp_path)
    assert_failed_together(result, seconds, "already exists")
    assert (tmp_path / "runs" / "sweep" / "sweep.csv").read_text() == "kept\n"


def test_an_unusable_output_directory_ends_every_process_at_once(tmp_path):
    (tmp_path / "a_file").write_text("")
    result, seconds = torchrun(estimate("-o", "a_file/out.json"), tmp_path)
    assert_failed_together(result, seconds, "'a_file' is not a directory, so 'a_file/out.json' cannot be created")


def test_bad_data_ends_every_process_at_once(tmp_path):
    # Every process loads the data and refuses it: unbinarised digits for a Bernoulli decoder.
    args = ["estimate", CHECKPOINT, "--data", "digits", "-k", "20", "-e", "iwae"]
    result, seconds = torchrun(args, tmp_path)
    assert_failed_together(result, seconds, "the model has a Bernoulli decoder but rows")


@pytest.mark.parametrize("option, sentence", [
    (["-k", "0"], "0 is not a positive number of samples per datapoint"),  # refused by click's parser
    (["--chains", "4"], "--chains, --steps, --schedule, --leapfrog and --init apply to --method ais"),  # by the command
])
def test_a_bad_option_ends_every_process_at_once(tmp_path, option, sentence):
    result, seconds = torchrun(["estimate", CHECKPOINT, "--data", "digits", "--binarize", "bernoulli", *option],
                               tmp_path)
    assert_failed_together(result, seconds, sentence, code=2)


FAILING_MODEL = textwrap.dedent(
    """
    import os
    import warnings

    from evalkit.models import IWAE


    class FailsOnOneRank(IWAE):
        '''The IWAE of the test, whose log_weights raises on torchrun rank FAIL_ON_RANK.'''

        def log_weights(self, x, noise):
            warnings.warn("FailsOnOneRank is a test model")
            if os.environ.get("RANK") == os.environ["FAIL_ON_RANK"]:
                raise RuntimeError(f"this model cannot score rank {os.environ['RANK']}'s rows")
            return super().log_weights(x, noise)


    def build():
        return FailsOnOneRank(12, [3], [[8, 8]])
    """
)


def write_failing_model(directory):
    (directory / "failing_model.py").write_text(FAILING_MODEL)
    torch.manual_seed(0)
    torch.save(IWAE(12, [3], [[8, 8]]).state_dict(), directory / "weights.pt")
    torch.save(torch.bernoulli(torch.full((40, 12), 0.5), generator=torch.Generator().manual_seed(1)),
               directory / "x.pt")


@pytest.mark.parametrize("failing_rank", [1, 0])
def test_a_model_error_on_one_rank_ends_every_process_with_its_message(tmp_path, failing_rank):
    write_failing_model(tmp_path)
    args = ["estimate", "weights.pt", "--model", "failing_model:build", "--data", "x.pt", "-k", "20", "-e", "iwae"]
    result, seconds = torchrun(args, tmp_path, extra_env={"FAIL_ON_RANK": str(failing_rank)})
    sentence = (f"RuntimeError: this model cannot score rank {failing_rank}'s rows (raised in failing_model.py, "
                "line ")
    assert_failed_together(result, seconds, sentence)
    prefix = f"Error: torchrun rank {failing_rank}: " if failing_rank else "Error: "
    assert prefix + sentence in result.stdout + result.stderr
    assert ", in log_weights); re-run with --debug for the traceback" in result.stdout + result.stderr



def test_a_warning_raised_on_every_rank_is_shown_once(tmp_path):
    write_failing_model(tmp_path)
    args = ["estimate", "weights.pt", "--model", "failing_model:build", "--data", "x.pt", "-k", "20", "-e", "iwae"]
    result, _ = torchrun(args, tmp_path, extra_env={"FAIL_ON_RANK": "none"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.count("FailsOnOneRank is a test model") == 1, result.stderr


def test_in_one_process_agreeing_and_sharing_a_failure_do_nothing(monkeypatch):
    from evalkit.sampling import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    distributed.agree()  # no process group to join, nobody to wait for
    distributed.share_failure("nobody is listening", 1)
    assert distributed.init() is None
    assert "ValueError: bad (raised inside the run)" in distributed.describe(ValueError("bad"))  # no traceback
    assert distributed.describe(distributed.OtherRankError("as it was", 2, 1)) == "as it was"
