"""Issue 23, item 4: a FIFO, a socket or a device named as an input is refused at once with one
sentence (a FIFO checkpoint used to block forever in torch.load). Every run has a timeout, so a
regression fails here instead of hanging the suite."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CKPT = str(ROOT / "examples" / "digits_iwae.pt")


@pytest.fixture(scope="module")
def specials(tmp_path_factory):
    base = tmp_path_factory.mktemp("special")
    os.mkfifo(base / "fifo.pt")
    os.mkfifo(base / "fifo.npy")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(base / "socket.npy"))
    (base / "adir.npy").mkdir()
    yield base
    sock.close()


def _run(*args):
    return subprocess.run([sys.executable, "-m", "evalkit", *args, "-q"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("case, args, message", [
    ("fifo checkpoint", ["estimate", "{base}/fifo.pt", "-k", "5"], "checkpoint '{base}/fifo.pt' is a FIFO (named pipe)"),
    ("device checkpoint", ["estimate", "/dev/null", "-k", "5"], "checkpoint '/dev/null' is a character device"),
    ("fifo data", ["estimate", CKPT, "--data", "{base}/fifo.npy", "-k", "5"], "data file '{base}/fifo.npy' is a FIFO"),
    ("socket data", ["estimate", CKPT, "--data", "{base}/socket.npy", "-k", "5"], "data file '{base}/socket.npy' is a socket"),
    ("device data", ["estimate", CKPT, "--data", "/dev/zero", "-k", "5"], "data file '/dev/zero' is a character device"),
    ("directory data", ["estimate", CKPT, "--data", "{base}/adir.npy", "-k", "5"], "data file '{base}/adir.npy' is a directory"),
    ("fifo log-weights", ["sweep", "--log-weights", "{base}/fifo.npy"], "log-weights file '{base}/fifo.npy' is a FIFO"),
    ("fifo reference", ["sweep", CKPT, "--binarize", "bernoulli", "--ks", "1,4", "--reference", "{base}/fifo.npy"],
     "'{base}/fifo.npy' is a FIFO"),
])
def test_special_inputs_are_refused_at_once(specials, case, args, message):
    result = _run(*[a.format(base=specials) for a in args])
    assert result.returncode == 1, (case, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message.format(base=specials) in lines[0], (case, result.stderr)
    assert "Traceback" not in result.stderr
