#!/usr/bin/env bash
# The CUDA path on one GPU in one command, at most 8 minutes once Python is set up: the tests marked gpu, a
# bf16 run through the CLI, stack=10 against 10 sequential runs at batch 128 and 1024, and bench_train.py on
# the GPU (scripts/gpu_check.py holds the steps). Each step's log goes to gpu_check/ (MTLEXP_GPU_LOGS=DIR);
# the last line printed is always
#   gpu_check ok=<0|1> stacked_speedup_b128=<x> stacked_speedup_b1024=<y> bench_ratio_b1024=<z>
#
# Python, in this order:
#   MTLEXP_GPU_PYTHON=python3   an interpreter that already imports mtlexp and a CUDA torch (e.g. a machine
#                               without a package index: its own torch, the other dependencies installed from
#                               carried wheels, PYTHONPATH=src); nothing is installed.
#   otherwise .venv, set up by scripts/setup_env.sh. Where python3 already has a CUDA torch, .venv is first
#                               made to see python3's packages, so setup_env.sh finds that torch and installs
#                               no CPU build; pip keeps it if it is in the project's range (pyproject.toml), else
#                               installs one from the index into .venv. MTLEXP_WHEELS=DIR: pip installs from that
#                               folder of wheels only (no index).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOGS="${MTLEXP_GPU_LOGS:-gpu_check}"
mkdir -p "$LOGS"
PY="${MTLEXP_GPU_PYTHON:-}"
if [ -z "$PY" ]; then
  if [ ! -x .venv/bin/python ] && python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    # A .pth file rather than --system-site-packages: python3 may itself be a venv's, whose packages
    # --system-site-packages would not show. Packages installed into .venv still come first.
    outer="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "gpu_check: python3 has a CUDA torch: .venv sees its packages ($outer)"
    python3 -m venv .venv
    echo "$outer" > "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/gpu-check-outer.pth"
  fi
  if [ -n "${MTLEXP_WHEELS:-}" ]; then
    export PIP_NO_INDEX=1 PIP_FIND_LINKS="$MTLEXP_WHEELS"
  fi
  echo "gpu_check: setting up .venv (scripts/setup_env.sh; log $LOGS/setup.log)"
  if ! (. scripts/setup_env.sh) >"$LOGS/setup.log" 2>&1; then
    tail -5 "$LOGS/setup.log" >&2
    exec python3 scripts/gpu_check.py --failed "setup failed (scripts/setup_env.sh): log $LOGS/setup.log"
  fi
  PY=.venv/bin/python
fi
exec "$PY" scripts/gpu_check.py --python "$PY" --logs "$LOGS" "$@"
