#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install evalkit into it, without ever replacing
# an existing torch: torch is installed only when the environment has none, and then as the
# CPU build 2.13.0 (a bare `pip install torch` would fetch several GB of CUDA packages).
#
#   EVALKIT_VENV   where the environment lives (default: .venv in the repository)
#   PYTHON         the interpreter that creates it (default: python3)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${EVALKIT_VENV:-$here/.venv}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
if ! "$py" -c "import torch" >/dev/null 2>&1; then
  echo "setup: no torch in $venv; installing the CPU build torch==2.13.0" >&2
  "$py" -m pip install --quiet --quiet "torch==2.13.0"
fi
# -qq: pip's errors still show; its warnings (here: about package-index folders of the machine's
# pip configuration that hold no such package) are not about evalkit and would bury the result.
"$py" -m pip install --quiet --quiet -e "$here[test]"
echo "setup: evalkit installed in $venv (torch $("$py" -c 'import torch; print(torch.__version__)'))" >&2
