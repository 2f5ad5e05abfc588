#!/usr/bin/env bash
# The MMoE paper's synthetic study: 4 models x task correlations 0.5 / 0.9 / 1.0 x 3 seeds.
# Usage: bash scripts/study_synthetic.sh [overrides]
set -euo pipefail
mtlexp train -m experiment=paper_synthetic model=single_task,shared_bottom,omoe,mmoe \
  data.correlation=0.5,0.9,1.0 seed=1,2,3 trainer.enable_progress_bar=false \
  hydra.sweep.dir=multirun/synthetic "$@"
mtlexp report multirun/synthetic
