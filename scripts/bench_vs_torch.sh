#!/usr/bin/env bash
# `baichuan bench` against PyTorch eager (scripts/reference/bench_torch.py) on the same model
# shapes, batch, precision, device and thread count, run one after the other; prints both and
# the ratio of tokens/s.
#   scripts/bench_vs_torch.sh [CONFIG] [SEQ] [BATCH] [PRECISIONS] [DEVICE]
#   default: config/small.toml 512 4 "fp32 bf16" cpu
# On a CPU without bf16 (avx512_bf16, amx_bf16) or fp16 (avx512_fp16, amx_fp16) instructions
# libtorch emulates those matrix products (under 1 GFLOP/s here): such rows are skipped, saying
# so, rather than left running for hours. BENCH_FORCE=1 runs them anyway.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONFIG="${1:-config/small.toml}"; SEQ="${2:-512}"; BATCH="${3:-4}"; PRECISIONS="${4:-fp32 bf16}"; DEVICE="${5:-cpu}"
PY="${BAICHUAN_PYTHON:-.venv/bin/python}"
STEPS="${BENCH_STEPS:-5}"; WARMUP="${BENCH_WARMUP:-2}"
B="${BAICHUAN_BIN:-target/release/baichuan}"
shape=$("$PY" - "$CONFIG" <<'PY'
import sys, tomllib
presets = {"tiny": (128, 4, 4, 352), "small": (512, 12, 8, 1408), "baichuan-7b": (4096, 32, 32, 11008)}
m = tomllib.load(open(sys.argv[1], "rb")).get("model", {})
h, l, n, f = presets[m.get("preset", "tiny")]
print(m.get("hidden_size", h), m.get("num_hidden_layers", l), m.get("num_attention_heads", n), m.get("intermediate_size", f), m.get("vocab_size", 64000))
PY
)
read -r H L N F V <<<"$shape"
echo "model: hidden $H, $L layers, $N heads, ffn $F, vocab $V; batch $BATCH x seq $SEQ on $DEVICE"
echo "machine: $(lscpu | grep 'Model name' | sed 's/Model name: *//'), nproc $(nproc); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
flags="$( (grep -o -w -E 'avx512_bf16|amx_bf16|avx512_fp16|amx_fp16' /proc/cpuinfo 2>/dev/null || true) | sort -u | tr '\n' ' ')"
for p in $PRECISIONS; do
  if [ "$DEVICE" = cpu ] && [ -z "${BENCH_FORCE:-}" ]; then
    case "$p" in
      bf16) echo "$flags" | grep -qE 'avx512_bf16|amx_bf16' || { echo "bf16: not run: this CPU has no bf16 instructions (BENCH_FORCE=1 runs it, emulated)"; continue; };;
      fp16) echo "$flags" | grep -qE 'avx512_fp16|amx_fp16' || { echo "fp16: not run: this CPU has no fp16 instructions (BENCH_FORCE=1 runs it, emulated)"; continue; };;
    esac
  fi
  ours=$($B bench --config "$CONFIG" --set data.seq_len="$SEQ" --set train.micro_batch_size="$BATCH" \
    --set train.global_batch_size="$BATCH" --set train.precision="$p" --set train.device="$DEVICE" \
    --steps "$STEPS" --warmup "$WARMUP" --json)
  peer=$("$PY" scripts/reference/bench_torch.py --hidden "$H" --layers "$L" --heads "$N" --ffn "$F" --vocab "$V" \
    --seq "$SEQ" --batch "$BATCH" --dtype "$p" --device "$DEVICE" --steps "$STEPS" --warmup "$WARMUP")
  "$PY" - "$p" "$ours" "$peer" <<'PY'
import json, sys
p, ours, peer = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"{p}: baichuan {ours['tokens_per_s']:.0f} tok/s (step {ours['step_s']*1e3:.0f} ms: fwd {ours['forward_s']*1e3:.0f}, "
      f"bwd {ours['backward_s']*1e3:.0f}, optim {ours['optimizer_s']*1e3:.0f}; MFU {100*ours['mfu']:.1f}%, {ours['peak_memory_mb']:.0f} MiB) | "
      f"pytorch eager {peer['tokens_per_s']:.0f} tok/s ({peer['threads']} threads"
      + (f", {peer['peak_memory_mb']:.0f} MiB" if 'peak_memory_mb' in peer else "") + f") | ratio {ours['tokens_per_s']/peer['tokens_per_s']:.2f}x")
PY
done
