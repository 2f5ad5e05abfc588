#!/usr/bin/env bash
# The MMoE paper's evidence (Ma et al., KDD 2018), at a size that finishes on 2 CPU cores in under an hour:
#   1. synthetic correlation study (Sec. 5, Fig. 4): shared-bottom, OMoE and MMoE at task correlations
#      p = 0.5 / 0.9 / 1.0, 10 paired seeds each (one function, alpha/beta fixed by data.data_seed; the seed
#      draws the samples, the initialisation and the order): one stacked run per model, its 3 x 10 replicas the
#      correlations crossed with the seeds (stack_over);
#   2. trainability (Sec. 5, Fig. 5): the distribution of the final loss over many seeds (stack=$TRAIN_SEEDS);
#   3. census-income task groups 1 and 2 (Sec. 6, Tables 2-3): single-task, shared-bottom, OMoE, MMoE x 3 seeds,
#      each model's seeds as one stacked run, when the UCI files are there;
# then `mtlexp report` on each, into docs/results/ (tables, CSV, figures).
#
# Usage: bash scripts/reproduce_paper.sh [census folder] [overrides for every run]
# Scale up: SYN_TRAIN=100000 TRAIN_SEEDS=200 TRAIN_SIZE=100000 bash scripts/reproduce_paper.sh ...
# (the paper's sample counts are not given; 100k, 8 epochs is conf/experiment/paper_synthetic.yaml).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CENSUS="${1:-$ROOT/../shared/data/census-income}"; shift || true
OUT="${RESULTS_DIR:-$ROOT/docs/results}"
RUNS="${RUNS_DIR:-$ROOT/multirun/paper}"
SYN_TRAIN="${SYN_TRAIN:-40000}"
SYN_SEEDS="${SYN_SEEDS:-10}"
TRAIN_SEEDS="${TRAIN_SEEDS:-30}"
TRAIN_SIZE="${TRAIN_SIZE:-10000}"
EPOCHS="${EPOCHS:-8}"
MODELS=shared_bottom,omoe,mmoe
# One job at a time: a stacked run keeps both cores busy on its own.
COMMON=(trainer.enable_progress_bar=false logger=csv)
mkdir -p "$OUT"

echo "== 1. synthetic: loss against task correlation, $SYN_SEEDS paired seeds, $SYN_TRAIN samples"
mtlexp train -m experiment=paper_synthetic model=$MODELS 'stack_over={data.correlation:[0.5,0.9,1.0]}' \
  data.num_train="$SYN_TRAIN" trainer.max_epochs="$EPOCHS" seed=1 stack="$SYN_SEEDS" "${COMMON[@]}" \
  hydra.sweep.dir="$RUNS/synthetic" "$@"
mtlexp report "$RUNS/synthetic" --baseline model=shared_bottom --out "$OUT/synthetic"

echo "== 2. trainability: $TRAIN_SEEDS seeds per model and correlation, $TRAIN_SIZE samples"
mtlexp train -m experiment=paper_synthetic model=$MODELS data.correlation=0.5,0.9,1.0 \
  data.num_train="$TRAIN_SIZE" trainer.max_epochs="$EPOCHS" seed=1001 stack="$TRAIN_SEEDS" "${COMMON[@]}" \
  hydra.sweep.dir="$RUNS/trainability" "$@"
mtlexp report "$RUNS/trainability" --baseline model=shared_bottom --out "$OUT/trainability"

if [ -f "$CENSUS/census-income.data.gz" ]; then
  for group in 1 2; do
    echo "== 3. census-income, task group $group"
    mtlexp train -m experiment=paper_census_group$group data.path="$CENSUS" model=single_task,$MODELS \
      seed=1 stack=3 "${COMMON[@]}" hydra.sweep.dir="$RUNS/census_group$group" "$@"
    mtlexp report "$RUNS/census_group$group" --baseline model=shared_bottom --out "$OUT/census_group$group"
  done
else
  echo "== 3. census-income: skipped (no census-income.data.gz in $CENSUS)"
fi
echo "results: $OUT"
