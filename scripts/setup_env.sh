# Sourced by quickstart.sh and test.sh: create .venv if missing and install mtlexp into it.
# Where the venv has no torch yet, the pinned CPU build goes in first, so that the dependency range
# (torch>=2.3) is already satisfied and pip never pulls a multi-GB CUDA build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
TORCH_PIN="${MTLEXP_TORCH_PIN:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
  echo "mtlexp: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import torch" >/dev/null 2>&1; then
  echo "mtlexp: installing $TORCH_PIN"
  python -m pip install --quiet "$TORCH_PIN" 2> >(grep -v "is ignored: it is neither" >&2)
fi
# Reinstall only when the project's requirements changed since the last install.
STAMP=.venv/.mtlexp-installed
WANT="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ] || ! command -v mtlexp >/dev/null 2>&1; then
  echo "mtlexp: installing the project into .venv"
  python -m pip install --quiet -e ".[dev]" 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$WANT" > "$STAMP"
fi
