#!/usr/bin/env bash
# The README's smaller CPU figures, measured in one run and appended with the machine to
# notes/figures-DATE.md (NOTES overrides):
#   1. tokenization: `baichuan prepare` against Python sentencepiece (scripts/bench_data.sh) on the
#      bundled sample with every core and with one thread, and on its Chinese part alone;
#   2. the native SentencePiece encoder against the `tokenizers` crate reading the same vocabulary
#      as a tokenizer.json (`baichuan tokenizer stats`, one thread, MB/s column);
#   3. libtorch's CPU matrix-product rate in fp32, bf16 and fp16 (torch.matmul in .venv, the
#      libtorch `baichuan` links), which decides whether a precision is usable on this CPU;
#   4. a checkpoint of `small` (1.7 GB): the loop's wait for the copy to host memory and the
#      background write, from `train`'s own lines.
#   scripts/bench_figures.sh      Needs target/release/baichuan and .venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NOTES="${NOTES:-notes/figures-$(date +%F).md}"
B=target/release/baichuan
PY=.venv/bin/python
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
out() { echo "$@" | tee -a "$WORK/raw"; }
run() { echo "\$ $*" >>"$WORK/raw"; "$@" 2>&1 | tee -a "$WORK/raw"; }

out "## bench_figures $(date '+%F %T'), commit $(git rev-parse --short HEAD)"
out "- machine: $(lscpu | grep 'Model name' | sed 's/Model name: *//'), nproc $(nproc), flags:$(grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16|avx512_fp16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
out
out "### 1. tokenization throughput (scripts/bench_data.sh)"
run bash scripts/bench_data.sh 1 "$(nproc)"
run bash scripts/bench_data.sh 1 1
mkdir -p "$WORK/zh"
cp data/sample/tang300.txt data/sample/song100.txt "$WORK/zh/"
run env BENCH_INPUT="$WORK/zh" bash scripts/bench_data.sh 1 "$(nproc)"

out
out "### 2. native encoder against the tokenizers crate on the same vocabulary (one thread)"
run "$PY" scripts/reference/spm_to_tokenizer_json.py assets/tokenizer.model "$WORK" data/sample/tang300.txt
run env RAYON_NUM_THREADS=1 "$B" tokenizer stats --tokenizer assets/tokenizer.model --tokenizer "$WORK/tokenizer.json" --input data/sample

out
out "### 3. libtorch CPU matrix products (GFLOP/s, 1024 x 1024 x 1024, torch $("$PY" -c 'import torch; print(torch.__version__)'), $(nproc) threads)"
run "$PY" - <<'PY'
import time, torch
n = 1024
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    a = torch.randn(n, n).to(dtype); b = torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 2.0 and reps < 200:
        torch.matmul(a, b); reps += 1
    dt = (time.perf_counter() - t0) / reps
    print("%-9s %8.1f GFLOP/s (%d products)" % (str(dtype).replace("torch.", ""), 2 * n**3 / dt / 1e9, reps))
PY

out
out "### 4. checkpoint of small: the loop's wait and the background write (train's own lines)"
run "$B" train --config config/small.toml --set train.steps=3 --set checkpoint.interval_steps=1 \
  --set checkpoint.async_save=true --set train.precision=fp32 --set train.device=cpu --set data.seq_len=64 \
  --set train.micro_batch_size=1 --set train.global_batch_size=1 --set data.valid_fraction=0.0 \
  --set train.log_interval=1000 --set job.run_dir="\"$WORK/small\"" --no-resume

{ echo; cat "$WORK/raw"; } >>"$NOTES"
echo "appended to $NOTES"
