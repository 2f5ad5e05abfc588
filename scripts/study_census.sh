#!/usr/bin/env bash
# The MMoE paper's census-income table with every baseline, plus CGC/PLE and sparse gates: per task group,
# 10 models x 3 seeds, then MMoE and CGC with DSelect-k and noisy top-k gates x 3 seeds; one report.
# Usage: bash scripts/study_census.sh <folder with census-income.data.gz and census-income.test.gz> [overrides]
set -euo pipefail
DATA="${1:?usage: study_census.sh <census folder> [overrides]}"; shift
MODELS=single_task,shared_bottom,l2_constrained,trace_norm,cross_stitch,tensor_factorization,omoe,mmoe,cgc,ple
for group in 1 2; do
  mtlexp train -m experiment=paper_census_group$group data.path="$DATA" model=$MODELS seed=1,2,3 \
    trainer.enable_progress_bar=false hydra.sweep.dir=multirun/census_group$group "$@"
  mtlexp train -m experiment=paper_census_group$group data.path="$DATA" model=mmoe,cgc \
    model/gate=dselect_k,topk seed=1,2,3 trainer.enable_progress_bar=false \
    hydra.sweep.dir=multirun/census_group${group}_sparse "$@"
  mtlexp report multirun/census_group$group multirun/census_group${group}_sparse
done
