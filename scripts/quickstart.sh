#!/usr/bin/env bash
# Fresh machine to a trained MMoE: set up .venv, then train on the embedded synthetic data.
# Extra arguments are Hydra overrides: bash scripts/quickstart.sh model=shared_bottom seed=3
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
exec mtlexp train model=mmoe "$@"
