#!/usr/bin/env bash
# The questions GAOKAO-Bench and AGIEval keep (single answer, four options), per file, on the real
# files, appended with the machine and the checkouts' commits to notes/exam-counts-DATE.md (NOTES
# overrides); also scores MODEL 5-shot on them (any model directory will do for the counts).
#   scripts/exam_counts.sh GAOKAO_BENCH_CHECKOUT AGIEVAL_CHECKOUT MODEL_DIR
# Needs target/release/baichuan.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
GAOKAO="$1"; AGIEVAL="$2"; MODEL="$3"
NOTES="${NOTES:-notes/exam-counts-$(date +%F).md}"
# an export of a repository (git archive) has no .git: GAOKAO_REV / AGIEVAL_REV name its commit
commit() { git -C "$1" rev-parse --short HEAD 2>/dev/null || echo "${2:-not a git checkout}"; }
mkdir -p notes
{
  echo "## exam_counts $(date '+%F %T'), commit $(git rev-parse --short HEAD)"
  echo "- machine: $(lscpu | grep 'Model name' | sed 's/Model name: *//'), nproc $(nproc)"
  echo "- GAOKAO-Bench: $GAOKAO ($(commit "$GAOKAO" "${GAOKAO_REV:-}")); AGIEval: $AGIEVAL ($(commit "$AGIEVAL" "${AGIEVAL_REV:-}")); model: $MODEL"
  echo
  echo '```'
  echo "\$ baichuan eval mc --model $MODEL --bench gaokao=$GAOKAO agieval=$AGIEVAL --shots 5 --device cpu"
  target/release/baichuan eval mc --model "$MODEL" --bench "gaokao=$GAOKAO" "agieval=$AGIEVAL" --shots 5 \
    --device cpu 2>&1 | grep -v '^scoring'
  echo '```'
} | tee -a "$NOTES"
echo "appended to $NOTES"
