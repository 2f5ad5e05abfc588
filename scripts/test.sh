#!/usr/bin/env bash
# Fresh machine to a tested project: set up .venv, then run the test suite on every core (pytest-xdist).
# Extra arguments go to pytest (-n 0 runs it in one process).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
exec python -m pytest -n auto "$@"
