#!/usr/bin/env bash
# Every weighting method on shared-bottom and MMoE, 3 seeds: the synthetic pair at p = 0.5 (the default
# synthetic data: 20k training samples, 10 epochs) and, given the UCI folder, census-income group 1
# (experiment=paper_census_group1). Two jobs at a time, one torch thread each; then a report per study with
# Delta-m against equal weighting.
# Usage: bash scripts/study_weighting.sh [census folder] [overrides]
set -euo pipefail
CENSUS="${1:-}"
shift || true
METHODS="$(ls "$(dirname "$0")/../conf/weighting" | sed 's/\.yaml$//' | paste -sd, -)"
export OMP_NUM_THREADS=1
COMMON=(model=shared_bottom,mmoe "weighting=$METHODS" seed=1,2,3 trainer.enable_progress_bar=false
        logger=csv hydra/launcher=joblib hydra.launcher.n_jobs=2)
mtlexp train -m data.correlation=0.5 "${COMMON[@]}" hydra.sweep.dir=multirun/weighting_synthetic "$@" || true
mtlexp report multirun/weighting_synthetic --baseline weighting=equal
if [ -n "$CENSUS" ]; then
  mtlexp train -m experiment=paper_census_group1 "data.path=$CENSUS" "${COMMON[@]}" \
    hydra.sweep.dir=multirun/weighting_census "$@" || true
  mtlexp report multirun/weighting_census --baseline weighting=equal
fi
