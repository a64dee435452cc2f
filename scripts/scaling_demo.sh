#!/usr/bin/env bash
# README's scaling figures, appended with the machine to notes/scaling-DATE.md (NOTES overrides):
#   1. Approach 3 on the published Chinchilla points (Hoffmann et al. 2022, Figure 4, as Besiroglu
#      et al. 2024 extracted them; data/scaling/) without the 5 of highest loss, as they fit it;
#   2. a micro IsoFLOP sweep on CPU: `sweep plan` of tiny models at 3e11 and 1e12 FLOPs x 3 sizes on
#      the bundled sample, `sweep run` (with the WSD decay branches), `scaling fit --plan`.
#   Both fits are drawn (`--plot`) into docs/img/scaling-chinchilla.png and scaling-micro-sweep.png.
#   scripts/scaling_demo.sh      Needs target/release/baichuan; the sweep takes some minutes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
NOTES="${NOTES:-notes/scaling-$(date +%F).md}"
OUT="${OUT:-runs/scaling-demo}"
B=target/release/baichuan
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
run() { echo "\$ $*"; "$@" 2>&1 | grep -v -E '^(step |data: |model: |train: |dist: |optimizer: |lr: |checkpoint: |saved |loss: |resumed |decay branch)'; }
rm -rf "$OUT"
mkdir -p docs/img
{
  echo "## scaling_demo $(date '+%F %T'), commit $(git rev-parse --short HEAD)"
  echo "- machine: $(lscpu | grep 'Model name' | sed 's/Model name: *//'), nproc $(nproc)"
  echo
  echo '```'
  run "$B" scaling fit --csv data/scaling/chinchilla-fig4.csv --drop-highest 5 --bootstrap 200 --budget 5.76e23 \
    --plot docs/img/scaling-chinchilla.png
  run "$B" sweep plan --config config/tiny.toml --set data.seq_len=32 --set 'train.device="cpu"' \
    --set eval.interval=1000 --set train.log_interval=1000 --budget 3e11 1e12 --sizes 3 --size-step 2.5 \
    --head-dim 16 --batch 8 --lr 3e-3 --out "$OUT"
  start=$(date +%s)
  run "$B" sweep run "$OUT/plan.toml" | grep -E '^sweep: .*(FLAGGED|FAILED|every run)' || true
  echo "(sweep run: $(( $(date +%s) - start )) s)"
  run "$B" scaling fit --plan "$OUT/plan.toml" --bootstrap 200 --budget 3e12 --json "$OUT/fit.json" \
    --plot docs/img/scaling-micro-sweep.png
  echo '```'
} | tee "$WORK/raw"
mkdir -p notes
cat "$WORK/raw" >>"$NOTES"
echo "appended to $NOTES"
