#!/usr/bin/env bash
# Fresh machine to a tested project: set up .venv, then run the test suite. Extra arguments go to pytest.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
exec python -m pytest "$@"
