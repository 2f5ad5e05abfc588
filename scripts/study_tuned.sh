#!/usr/bin/env bash
# The MMoE paper's tuned comparison on census-income task group 1 (docs/studies.md, "Tuned comparison"):
#   1. search: shared-bottom, OMoE, MMoE, CGC and PLE each get the same Optuna study (hparams_search=census_tuned:
#      lr, batch size and tower width for all; expert or bottom width and number of experts per model, below),
#      24 trials of 3 stacked seeds (1-3), 10 epochs, median pruning, objective val/norm_loss (validation only);
#   2. rerun: each model's best configuration (its best_trial.yaml) with 10 seeds the search never used (101-110,
#      one stacked run);
#   3. report: `mtlexp report --group-by model --baseline model=shared_bottom` on the reruns (paired tests over
#      the seeds), and summary.md: the budget, each phase's wall time, the share of trials pruned, the best
#      configurations and their parameter counts.
# Usage: bash scripts/study_tuned.sh <folder with census-income.data.gz and census-income.test.gz> [overrides]
# The overrides go to every run of both phases. TUNED_DIR (default multirun/tuned) is the study folder; a second
# call resumes each model's study (n_trials is its total) and reruns the best configurations again.
# MTLEXP_TUNED_QUICK=1: 2 trials of 1 epoch, 2 rerun seeds (a smoke test: give it small census files).
# MTLEXP_TUNED_MODELS="shared_bottom cgc": the models to compare (default: all five; the baseline, shared_bottom,
# must be one of them).
# Needs the environment mtlexp is installed in (mtlexp and python on PATH) with the hpo extra.
set -euo pipefail
DATA="${1:?usage: study_tuned.sh <census folder> [overrides]}"; shift
ROOT="${TUNED_DIR:-multirun/tuned}"
PYTHON="${PYTHON:-python}"
HELPER="$(dirname "${BASH_SOURCE[0]}")/tuned_study.py"
read -r -a MODELS <<< "${MTLEXP_TUNED_MODELS:-shared_bottom omoe mmoe cgc ple}"
TRIALS=24 EPOCHS=10 SEEDS=3 RERUN_FIRST=101 RERUN_SEEDS=10
if [ "${MTLEXP_TUNED_QUICK:-0}" = 1 ]; then
  TRIALS=2 EPOCHS=1 RERUN_SEEDS=2
fi

# The dimensions each model adds to the shared space. Experts: 4-16 in every MoE (CGC/PLE: 1-4 per task for
# two tasks plus 2-8 shared), each 16-64 wide. Shared-bottom's bottom width spans the MoE banks' total units,
# 4 x 16 = 64 to 16 x 64 = 1024, so its parameter counts cover the range the MoE models' do (docs/studies.md).
# Overrides given to the script come after these and win (hydra.sweeper.n_trials=48 raises every budget).
EXPERTS=('model.expert_hidden=choice([16], [32], [64])')
space() {
  case "$1" in
    shared_bottom) SPACE=('model.bottom_hidden=choice([64], [128], [256], [512], [1024])') ;;
    omoe|mmoe) SPACE=("${EXPERTS[@]}" 'model.num_experts=choice(4, 8, 16)') ;;
    cgc|ple) SPACE=("${EXPERTS[@]}" 'model.num_task_experts=choice(1, 2, 4)'
                    'model.num_shared_experts=choice(2, 4, 8)') ;;
  esac
}

STAMP="$(date +%Y-%m-%d_%H-%M-%S)"
mkdir -p "$ROOT"
TIMES="$ROOT/timings.tsv"
: > "$TIMES"
timed() {  # timed <phase> <command...>: runs it, and appends its wall time to timings.tsv
  local phase="$1" start=$SECONDS
  shift
  "$@"
  printf '%s\t%s\n' "$phase" "$((SECONDS - start))" >> "$TIMES"
}
COMMON=(data.path="$DATA" trainer.max_epochs="$EPOCHS" trainer.enable_progress_bar=false)
echo "== budget: ${#MODELS[@]} models x $TRIALS trials x $SEEDS stacked seeds x $EPOCHS epochs (median pruning);" \
     "reruns: seeds $RERUN_FIRST-$((RERUN_FIRST + RERUN_SEEDS - 1)); study folder $ROOT"

for model in "${MODELS[@]}"; do
  space "$model"
  echo "== search: $model"
  timed "search $model" mtlexp train -m hparams_search=census_tuned model="$model" "${COMMON[@]}" \
    hydra.sweeper.n_trials="$TRIALS" stack="$SEEDS" "${SPACE[@]}" hydra.sweeper.study_name="tuned_$model" \
    hydra.sweeper.storage="sqlite:///$ROOT/search/$model/optuna.db" hydra.sweep.dir="$ROOT/search/$model/$STAMP" "$@"
done

for model in "${MODELS[@]}"; do
  # An assignment, not a process substitution: set -e then stops the script when a study has no best trial.
  best="$("$PYTHON" "$HELPER" best-params "$ROOT/search/$model")"
  mapfile -t BEST <<< "$best"
  echo "== rerun: $model ${BEST[*]}"
  # overwrite=true: a second call reruns into the same folder, and the study's best may have changed since.
  timed "rerun $model" mtlexp train hparams_search=census_tuned model="$model" "${COMMON[@]}" "${BEST[@]}" \
    seed="$RERUN_FIRST" stack="$RERUN_SEEDS" hydra.run.dir="$ROOT/rerun/$model" overwrite=true "$@"
done

echo "== report"
timed report mtlexp report "$ROOT/rerun" --group-by model --baseline model=shared_bottom --out "$ROOT/report"
"$PYTHON" "$HELPER" summary "$ROOT" --models "${MODELS[@]}" --trials "$TRIALS" --seeds "$SEEDS" \
  --epochs "$EPOCHS" --rerun-seeds "$RERUN_FIRST" "$RERUN_SEEDS" --data "$DATA" --overrides "$*"
