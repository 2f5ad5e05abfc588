#!/usr/bin/env bash
# The MMoE paper's census-income table: 4 models x 2 task groups x 3 seeds, one multirun per group.
# Usage: bash scripts/study_census.sh <folder with census-income.data.gz and census-income.test.gz> [overrides]
set -euo pipefail
DATA="${1:?usage: study_census.sh <census folder> [overrides]}"; shift
for group in 1 2; do
  mtlexp train -m experiment=paper_census_group$group data.path="$DATA" \
    model=single_task,shared_bottom,omoe,mmoe seed=1,2,3 trainer.enable_progress_bar=false \
    hydra.sweep.dir=multirun/census_group$group "$@"
  mtlexp report multirun/census_group$group
done
