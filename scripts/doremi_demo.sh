#!/usr/bin/env bash
# README's worked example of learned mixture weights (DoReMi) on the bundled sample's two sources
# (config/tiny.toml: the English Bible and the Tang and Song poems, 0.7 : 0.3), on CPU:
#   1. the reference: `baichuan train` of the tiny preset on the config's base mixture;
#   2. the proxy: `baichuan mixture doremi` against it (eta 1, smoothing 1e-3), which writes
#      <run_dir>/doremi/weights.toml, a ready [[data.sources]] block.
# The output and the machine go to notes/doremi-DATE.md (NOTES overrides).
#   scripts/doremi_demo.sh [STEPS]      Needs target/release/baichuan; STEPS defaults to 60.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
STEPS="${1:-60}"
NOTES="${NOTES:-notes/doremi-$(date +%F).md}"
RUN="${RUN:-runs/doremi-demo}"
B=target/release/baichuan
SET=(--config config/tiny.toml --set "job.run_dir=\"$RUN\"" --set "train.steps=$STEPS" --set train.warmup_steps=10)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
rm -rf "$RUN"
{
  echo "## doremi_demo $(date '+%F %T'), commit $(git rev-parse --short HEAD)"
  echo "- machine: $(lscpu | grep 'Model name' | sed 's/Model name: *//'), nproc $(nproc)"
  echo
  echo '```'
  echo "\$ $B train ${SET[*]} --set eval.interval=$STEPS"
  "$B" train "${SET[@]}" --set "eval.interval=$STEPS" 2>&1 | grep -v '^ *[0-9]*:' | tail -12
  echo "\$ $B mixture doremi ${SET[*]}"
  "$B" mixture doremi "${SET[@]}" 2>&1 | tail -12
  echo "\$ cat $RUN/doremi/weights.toml"
  cat "$RUN/doremi/weights.toml"
  echo '```'
} | tee "$WORK/raw"
mkdir -p notes
cat "$WORK/raw" >>"$NOTES"
echo "appended to $NOTES"
