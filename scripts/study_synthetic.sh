#!/usr/bin/env bash
# The MMoE paper's synthetic study: every model x task correlations 0.5 / 0.9 / 1.0 x 3 seeds.
# Usage: bash scripts/study_synthetic.sh [overrides]
set -euo pipefail
mtlexp train -m experiment=paper_synthetic \
  model=single_task,shared_bottom,l2_constrained,trace_norm,cross_stitch,tensor_factorization,omoe,mmoe,cgc,ple \
  data.correlation=0.5,0.9,1.0 seed=1,2,3 trainer.enable_progress_bar=false \
  hydra.sweep.dir=multirun/synthetic "$@"
mtlexp report multirun/synthetic
