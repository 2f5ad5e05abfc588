#!/usr/bin/env bash
# Fresh machine to a tested project: set up .venv, then run the test suite on every core (pytest-xdist).
# Extra arguments go to pytest (-n 0 runs it in one process).
#   --newest   the smoke subset (tests marked `newest`) in .venv-newest, on the newest torch and Lightning
#              that the declared ranges admit (scripts/setup_env.sh)
set -euo pipefail
if [ "${1:-}" = "--newest" ]; then
  shift
  export MTLEXP_NEWEST=1
  . "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
  exec python -m pytest -n auto -m newest "$@"
fi
. "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
exec python -m pytest -n auto "$@"
