"""Checkpoints are verified before use, and every output records the sha256 of its input files.

Issue 24 item 3: bytes flipped inside a tensor record of a ``torch.save`` zip make that record's
CRC-32 wrong, yet ``torch.load`` reads it (evalkit then reported IWAE -21.4057 for the bundled
IWAE, whose true value is -21.3166). Now the record is refused, named, before ``torch.load``.
"""
import hashlib
import json
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import evalkit
from evalkit_cli.main import main
from evalkit.errors import CheckpointError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def flip_bytes_in_record(src: Path, dst: Path, suffix: str, offset: int = 100, count: int = 4) -> str:
    """Copy ``src`` to ``dst`` and XOR ``count`` bytes of the stored record ending in ``suffix`` with 0x40."""
    shutil.copy(src, dst)
    with zipfile.ZipFile(dst) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    assert info.compress_type == zipfile.ZIP_STORED and info.file_size > offset + count
    with open(dst, "r+b") as handle:
        handle.seek(info.header_offset)
        name_length, extra_length = struct.unpack("<HH", handle.read(30)[26:30])
        start = info.header_offset + 30 + name_length + extra_length + offset
        handle.seek(start)
        flipped = bytes(byte ^ 0x40 for byte in handle.read(count))
        handle.seek(start)
        handle.write(flipped)
    return info.filename


def test_flipped_tensor_bytes_are_refused_naming_the_record(tmp_path):
    bad = tmp_path / "digits_iwae.pt"
    record = flip_bytes_in_record(EXAMPLES / "digits_iwae.pt", bad, "data/2")
    # The defect: torch.load itself does not notice (the flipped weights load as different numbers).
    loaded = torch.load(bad, map_location="cpu", weights_only=True)
    assert isinstance(loaded, dict)
    with pytest.raises(CheckpointError) as caught:
        evalkit.load_model(bad)
    message = str(caught.value)
    assert str(bad) in message and f"'{record}'" in message and "CRC" in message
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence


def test_cli_refuses_a_corrupted_checkpoint_in_one_line(tmp_path):
    bad = tmp_path / "model.pt"
    record = flip_bytes_in_record(EXAMPLES / "digits_iwae.pt", bad, "data/2")
    result = CliRunner().invoke(main, ["estimate", str(bad), "--data", "digits", "--binarize", "bernoulli", "-k", "4"])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and record in lines[0] and "Traceback" not in result.output


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_corrupted_torchscript_archive_is_refused(tmp_path):
    module = torch.jit.script(torch.nn.Linear(200, 30))
    good = tmp_path / "good.pt"
    torch.jit.save(module, str(good))
    bad = tmp_path / "bad.pt"
    record = flip_bytes_in_record(good, bad, "data/0")
    with pytest.raises(CheckpointError, match="does not match its CRC-32"):
        evalkit.load_model(bad)
    assert record.endswith("data/0")


@pytest.mark.parametrize("name", ["digits_iwae.pt", "digits_bnn.pt", "digits_conv_vae.pt"])
def test_intact_examples_pass_the_check(name):
    evalkit.load_model(EXAMPLES / name)


def test_file_sha256_is_sha256sum_and_reads_in_chunks(tmp_path, monkeypatch):
    import evalkit.sources.provenance as provenance
    from evalkit.sources.provenance import file_sha256

    payload = bytes(range(256)) * 5000 + b"tail"
    path = tmp_path / "blob.bin"
    path.write_bytes(payload)
    monkeypatch.setattr(provenance, "CHUNK_BYTES", 1000)  # many chunks, one odd-sized last chunk
    assert file_sha256(path) == hashlib.sha256(payload).hexdigest()


def test_outputs_record_the_sha256_of_checkpoint_and_data_file(tmp_path):
    data = tmp_path / "x.npy"
    import numpy as np

    np.save(data, (np.random.default_rng(0).random((12, 64)) < 0.3).astype(np.float32))
    checkpoint = EXAMPLES / "digits_iwae.pt"
    result = evalkit.estimate(str(checkpoint), str(data), k=4, estimators=["iwae"])
    meta = json.loads(result.to_json())["metadata"]
    assert meta["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert meta["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    swept = evalkit.sweep(str(checkpoint), [1, 2, 4], data=str(data))
    meta = json.loads(swept.to_json())["metadata"]
    assert meta["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert meta["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    from evalkit.output.report import inputs_sentence

    assert meta["checkpoint_sha256"] in inputs_sentence(meta) and meta["data_sha256"] in inputs_sentence(meta)


def test_keys_are_present_and_null_for_inputs_that_are_not_files():
    model = evalkit.load_model(EXAMPLES / "digits_iwae.pt")
    meta = evalkit.estimate(model, "digits", k=2, estimators=["iwae"], binarize="bernoulli").metadata
    assert meta["checkpoint_sha256"] is None and meta["data_sha256"] is None
    matrix = evalkit.estimate(torch.zeros(3, 5, dtype=torch.float64), estimators=["iwae"]).metadata
    assert matrix["checkpoint_sha256"] is None and matrix["data_sha256"] is None
