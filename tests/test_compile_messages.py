"""Issue 23, item 5: torch.compile's own log lines (eight lines per recompile-limit note on stderr,
out of --quiet's reach) become one evalkit warning that --quiet hides."""
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch  # noqa: F401  (sets up torch's loggers and their stderr handlers)
import torch._dynamo  # noqa: F401

from evalkit.sampling.runner import EngineWarning, torch_compile_messages

ROOT = Path(__file__).resolve().parents[1]


def test_torchs_log_lines_become_one_engine_warning(capfd):
    with pytest.warns(EngineWarning, match=r"torch.compile logged 2 warning\(s\) .* the first: 'hit config.recompile_limit \(8\)'") as caught:
        with torch_compile_messages():
            logging.getLogger("torch._dynamo.convert_frame").warning("hit config.recompile_limit (8)\n   function: f")
            logging.getLogger("torch._inductor.utils").warning("another note")
    assert len([w for w in caught if w.category is EngineWarning]) == 1
    assert capfd.readouterr().err == ""  # nothing printed by torch's handlers
    assert logging.getLogger("torch._dynamo").handlers and not isinstance(
        logging.getLogger("torch._dynamo").handlers[0], type(None))  # torch's handlers are back


def test_no_torch_log_no_warning(recwarn):
    with torch_compile_messages():
        pass
    assert not [w for w in recwarn if w.category is EngineWarning]


@pytest.mark.slow
def test_compile_quiet_prints_nothing_on_stderr():
    args = [sys.executable, "-m", "evalkit", "estimate", str(ROOT / "examples" / "digits_iwae.pt"),
            "--binarize", "bernoulli", "-k", "40", "--compile", "-e", "iwae"]
    quiet = subprocess.run(args + ["-q"], capture_output=True, text=True, timeout=580, cwd=ROOT)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert "iwae" in quiet.stdout and "torch._dynamo" not in quiet.stdout
