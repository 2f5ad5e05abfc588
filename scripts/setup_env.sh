# Sourced by quickstart.sh and test.sh: create the venv if missing and install mtlexp into it.
# Where the venv has no torch yet, the pinned CPU build goes in first, so that the dependency range
# (torch>=2.13) is already satisfied and pip never pulls a multi-GB CUDA build.
# MTLEXP_NEWEST=1 (test.sh --newest): a venv of its own, .venv-newest, with the newest torch, Lightning and
# torchmetrics that the declared ranges admit, as `pip install mtlexp` gives a user today (a CUDA build of
# torch on Linux: several GB).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
TORCH_PIN="${MTLEXP_TORCH_PIN:-torch==2.13.0}"
NEWEST="${MTLEXP_NEWEST:-0}"
VENV=.venv
[ "$NEWEST" = 1 ] && VENV=.venv-newest
if [ ! -x "$VENV/bin/python" ]; then
  echo "mtlexp: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
quiet_pip() { python -m pip install --quiet "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
if [ "$NEWEST" = 1 ]; then
  echo "mtlexp: installing the newest torch, Lightning and torchmetrics the project admits into $VENV"
  quiet_pip --upgrade --upgrade-strategy eager -e . "pytest>=7.4" "pytest-xdist>=3.5"
  python -c "import torch, pytorch_lightning, torchmetrics; print(f'mtlexp: torch {torch.__version__}, pytorch-lightning {pytorch_lightning.__version__}, torchmetrics {torchmetrics.__version__}')"
  return 0 2>/dev/null || exit 0
fi
if ! python -c "import torch" >/dev/null 2>&1; then
  echo "mtlexp: installing $TORCH_PIN"
  quiet_pip "$TORCH_PIN"
fi
# Reinstall only when the project's requirements changed since the last install.
STAMP="$VENV/.mtlexp-installed"
WANT="$(sha256sum < pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ] || ! command -v mtlexp >/dev/null 2>&1; then
  echo "mtlexp: installing the project into $VENV"
  quiet_pip -e ".[dev]"
  echo "$WANT" > "$STAMP"
fi
