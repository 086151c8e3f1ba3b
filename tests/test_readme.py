"""The README stays well-formed and its commands stay true (CI runs its test command)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_code_fences_open_and_close_on_their_own_lines():
    # A fence inside a sentence or a heading is a broken paste (it happened once: the CLI block
    # replaced every occurrence of a word, three sections at once).
    lines = README.splitlines()
    assert all(line.lstrip().startswith("```") for line in lines if "```" in line)
    assert sum(line.strip().startswith("```") for line in lines) % 2 == 0
    assert not [line for line in lines if line.startswith("#") and "`" * 3 in line]


def test_the_cli_synopsis_appears_once():
    assert README.count("evalkit estimate CHECKPOINT [--data") == 1


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(bash scripts/setup_env\.sh && [^\n]+)\n```", README)
    assert len(commands) >= 2, "the README must show the set-up + example and the set-up + tests commands"
    test_command = [c for c in commands if "pytest" in c]
    assert test_command and test_command[0] in (ROOT / ".ci" / "run").read_text()


PROTOCOL = (ROOT / "docs" / "model-protocol.md").read_text()


def test_the_model_rules_live_in_docs_model_protocol_and_the_readme_links_them():
    # One source of truth: the rules are written once (docs/model-protocol.md); the README
    # summarises and links (issue 19: the two disagreed on the 32-row layout and the count).
    rules = re.findall(r"^\d+\. \*\*(.+?)\*\*", PROTOCOL, flags=re.M)
    assert rules == ["Full normalised log-densities.", "Rows are independent.", "Thread-safe calls.",
                     "No randomness inside."]
    assert "Four rules" in PROTOCOL and "four rules" in README
    for rule in rules:
        assert rule not in README, f"the README repeats the rule {rule!r}; link docs/model-protocol.md instead"
    assert README.count("](docs/model-protocol.md") >= 2


def test_the_row_layout_is_described_as_the_engine_does_it():
    # evalkit/sampling/runner.py (_Batch: slots[b] % 32 == index % 32; padding gets zero noise).
    text = " ".join(PROTOCOL.split())
    assert "repeating the last row" not in text
    assert "remainder modulo 32 is its dataset index modulo 32" in text
    assert "padded to a multiple of 32 with zero noise" in text


def test_the_readme_has_the_lightning_and_pythae_examples():
    assert "# ---- end of my_glue.py" in README and "class PythaeVAE" in README
    assert "--model my_glue:build_vae --prefix vae." in README
    assert 'diagonal_normal(out["embedding"], log_var=out["log_covariance"])' in README
