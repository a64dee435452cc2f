#!/usr/bin/env bash
# Tokenization throughput: `baichuan prepare` against Python sentencepiece on the same files
# with the same number of threads, in one run. Prints both and the ratio.
#   scripts/bench_data.sh [COPIES] [JOBS]   (default: the bundled sample once, all cores)
# BENCH_INPUT=DIR takes that directory's .txt files instead of data/sample.
# More copies inflate our figure: repeated words and lines hit the encoder's word cache.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COPIES="${1:-1}"
JOBS="${2:-$(nproc)}"
WORK="${BENCH_DIR:-/tmp/baichuan-bench-data}"
rm -rf "$WORK" && mkdir -p "$WORK/in"
for i in $(seq 1 "$COPIES"); do
  for f in "${BENCH_INPUT:-data/sample}"/*.txt; do cp "$f" "$WORK/in/$(basename "$f" .txt)-$i.txt"; done
done
MB=$(du -sm "$WORK/in" | cut -f1)
echo "corpus: $COPIES copies of ${BENCH_INPUT:-data/sample}, ${MB} MB, $JOBS threads"
ours=$(target/release/baichuan prepare --input "$WORK/in" --tokenizer assets/tokenizer.model \
  --out "$WORK/out" --jobs "$JOBS" --force | grep -o '([0-9.]* MB/s)' | tr -d '()' | cut -d' ' -f1)
peer=$(.venv/bin/python scripts/reference/bench_tokenize.py assets/tokenizer.model "$JOBS" "$WORK"/in/*.txt)
peer_mbs=$(echo "$peer" | .venv/bin/python -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["mb_per_s"])')
echo "baichuan prepare:            $ours MB/s (tokenize + write shards)"
echo "python sentencepiece:        $peer_mbs MB/s (encode only)"
.venv/bin/python -c "print('ratio baichuan/python:       %.2fx' % ($ours / $peer_mbs))"
