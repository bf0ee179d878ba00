#!/usr/bin/env bash
# Regenerates assets/spectrum.duckdb from the embedded pair in assets/pair:
#   1. every registered merge method over λ = 0, 0.1, …, 1 on the synthetic task;
#   2. linear on a fine 0.01 grid around the phase change (λ = LO…HI below) and a 0.05
#      grid where merges beat the thinking parent (0.80…1);
#   3. the baselines on the thinking parent: budget forcing at BUDGETS thinking tokens and
#      NoThinking;
#   4. linear with attention and MLP at their own λ (a 5 × 5 grid, other kinds at 0.5);
#   5. the weight analysis of the pair;
#   6. confirmations of the apparent improvements on the thinking parent that the README
#      states (CONFIRM: linear's best λ of steps 1-3) with the parents on the same fresh
#      problems (data seed 1): greedy on CONFIRM_PER_LEVEL problems per level, and sampled
#      with k = 4 on SAMPLED_PER_LEVEL of the same (cells of CONFIRM_BATCH units: the
#      sampled rows depend on it); 210 drawn so that at least 200 per level remain once the
#      sweep's own are dropped (level 1 has only about 300 distinct held-out problems);
#   7. the thinking parent's intermediate checkpoint (thinking_concise) as a checkpoint row on
#      the same problems, so the report tests merges against it;
#   8. the loss along the linear path: NLL of held-out task text (TEXT, written by the toy's
#      task generator) and of each parent's own answers at every λ of 0, 0.1, …, 1.
# Greedy decoding (k = 1), PER_LEVEL held-out problems per level (5 levels), at most
# MAX_NEW new tokens. Every step is resumable: killed, it picks up where it stopped.
# Usage: assets/make_spectrum_db.sh [DB]   (default assets/spectrum.duckdb; an existing DB
# is completed, not redone: delete it first to regenerate from scratch)
set -euo pipefail
cd "$(dirname "$0")/.."
DB="${1:-assets/spectrum.duckdb}"
PAIR="${PAIR:-assets/pair}"
PER_LEVEL="${PER_LEVEL:-10}"
# A level-5 trace with 4 re-checks is 124 tokens: 160 leaves room for the answer.
MAX_NEW="${MAX_NEW:-160}"
FINE_LO=0.40
FINE_HI=0.60
BUDGETS="${BUDGETS:-8,16,24,32,48,64}"
CONFIRM="${CONFIRM:-linear@0.8}"
CONFIRM_PER_LEVEL="${CONFIRM_PER_LEVEL:-210}"
SAMPLED_PER_LEVEL="${SAMPLED_PER_LEVEL:-210}"
CONFIRM_BATCH="${CONFIRM_BATCH:-1000}"
TEXT="${TEXT:-assets/heldout_text.jsonl}"
PY="${SPECTRUM_VENV:-.venv}/bin/python"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

METHODS=$("$PY" -c "from spectrum.methods import method_names; print(','.join(method_names()))")
COMMON=(--direct "$PAIR/direct" --thinking "$PAIR/thinking" --base "$PAIR/base"
        --bench synthetic --limit "$PER_LEVEL" --greedy --max-new-tokens "$MAX_NEW"
        --batch-size 100 --db "$DB")
"$PY" -m spectrum sweep "${COMMON[@]}" --methods "$METHODS" --lam 0:1:0.1
"$PY" -m spectrum sweep "${COMMON[@]}" --methods linear --lam "$FINE_LO:$FINE_HI:0.01"
"$PY" -m spectrum sweep "${COMMON[@]}" --methods linear --lam 0.80:1:0.05
"$PY" -m spectrum sweep "${COMMON[@]}" --methods linear --lam 1 --budgets "$BUDGETS" --no-thinking
"$PY" -m spectrum sweep "${COMMON[@]}" --methods linear --lam "0.5,attn=0:1:0.25,mlp=0:1:0.25"
"$PY" -m spectrum analyze --direct "$PAIR/direct" --thinking "$PAIR/thinking" --db "$DB"
for config in $CONFIRM; do
  "$PY" -m spectrum confirm --db "$DB" --config "$config" --limit "$CONFIRM_PER_LEVEL" \
    --batch-size "$CONFIRM_BATCH"
  "$PY" -m spectrum confirm --db "$DB" --config "$config" --limit "$SAMPLED_PER_LEVEL" \
    --batch-size "$CONFIRM_BATCH" --k 4 --sample --data-seed 1
done
"$PY" -m spectrum sweep "${COMMON[@]}" --methods linear --lam 0,1 \
  --checkpoint thinking_concise="$PAIR/thinking_concise"
"$PY" -m spectrum toy text --model "$PAIR/direct" --out "$TEXT" --force
"$PY" -m spectrum analyze --direct "$PAIR/direct" --thinking "$PAIR/thinking" \
  --loss-path --text "$TEXT" --lam 0:1:0.1 --db "$DB"
