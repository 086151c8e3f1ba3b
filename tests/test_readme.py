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
