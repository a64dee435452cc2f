#!/usr/bin/env bash
# Every GPU check in one call, a short table printed last.
#
#   scripts/gpu_check.sh --prepare   # here (has Rust): build, and copy the binaries to target/gpu/
#   scripts/gpu_check.sh             # on the CUDA machine, from the repository root
#
# The CUDA machine needs no Rust toolchain: it runs the binaries built here (carry target/gpu
# and assets) against its own torch 2.11 install (TORCH_VENV, default /opt/torch/.venv), whose
# Python with transformers is also the oracle. Checks:
#   1. transformers parity on CUDA, fp32 (tight tolerances) and bf16 (bf16 tolerances)
#   2. `init` of the small preset, then a short bf16 `train` from it on the GPU: loss falls,
#      tokens/s and MFU
#   3. which scaled-dot-product-attention kernel libtorch chose: a fused one (flash, or cuDNN
#      attention, which libtorch 2.11 prefers on H100) is expected on sm80+
#   4. NCCL at world size 1 runs the real code path (unique id through the store, its own
#      stream, events) and gives the same losses as no communication; its bucket collectives
#      are issued during backward (issue times against the end of backward)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ "${1:-}" = "--prepare" ]; then
  set -e
  # shellcheck source=scripts/env.sh
  source scripts/env.sh
  cargo build --release --quiet
  cargo test --release --quiet -p baichuan-trainer --test parity --no-run 2>/dev/null
  mkdir -p target/gpu
  cp target/release/baichuan target/gpu/
  cp "$(ls -t target/release/deps/parity-* | grep -v '\.d$' | head -1)" target/gpu/parity
  ls -la target/gpu
  exit 0
fi

OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
TORCH_VENV="${TORCH_VENV:-/opt/torch/.venv}"
PY="$TORCH_VENV/bin/python3"
SITE="$("$PY" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')"
LIBS="$SITE/torch/lib"
for d in "$SITE"/nvidia/*/lib "$SITE"/nvidia/cu13/lib; do [ -d "$d" ] && LIBS="$LIBS:$d"; done
export LD_LIBRARY_PATH="$LIBS:${LD_LIBRARY_PATH:-}"
export BAICHUAN_PYTHON="$PY" BAICHUAN_ROOT="$ROOT"
B="$ROOT/target/gpu/baichuan"
declare -a ROWS

row() { ROWS+=("$(printf '%-34s %-6s %s' "$1" "$2" "$3")"); }

gpu="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
echo "GPU: ${gpu:-none found}"

# 1. parity against transformers on CUDA
for dtype in fp32 bf16; do
  log="$OUT/parity-$dtype.log"
  BAICHUAN_TEST_DEVICE=cuda BAICHUAN_TEST_DTYPE=$dtype timeout 300 target/gpu/parity --nocapture >"$log" 2>&1
  rc=$?
  line="$(grep -o 'parity (cuda.*' "$log" | head -1)"
  detail="$(echo "$line" | "$PY" -c '
import json, sys
t = sys.stdin.read()
if "{" not in t: print("no result"); sys.exit()
r = json.loads(t[t.index("{"):])
g = r.get("generate_equal")
print("logits max|d| %.2e rel %.2e, loss rel %.2e, grad rel max %.2e%s" % (r["logits_max_abs"], r["logits_rel"], r["loss_rel"], r["grad_rel_max"], "" if g is None else ", greedy equal %s" % g))')"
  row "parity vs transformers ($dtype)" "$([ $rc -eq 0 ] && echo PASS || echo FAIL)" "$detail"
  [ $rc -eq 0 ] || tail -20 "$log"
done

# 2. init + short bf16 training of `small` on the GPU
rm -rf /tmp/gpu-small-init /tmp/gpu-small-run
timeout 120 "$B" init --config config/small.toml --out /tmp/gpu-small-init >"$OUT/init.log" 2>&1
rc=$?
row "init small" "$([ $rc -eq 0 ] && echo PASS || echo FAIL)" "$(tail -1 "$OUT/init.log")"
timeout 300 "$B" train --config config/small.toml --set train.device=cuda --set train.steps=40 \
  --set train.log_interval=10 --set model.init_from=\"/tmp/gpu-small-init\" \
  --set job.run_dir=\"/tmp/gpu-small-run\" >"$OUT/train-small.log" 2>&1
rc=$?
cat "$OUT/train-small.log" | grep -v '^\s*$' | tail -12
first="$(grep -m1 -o 'step      1 | loss [0-9.]*' "$OUT/train-small.log" | awk '{print $NF}')"
last="$(grep -o 'loss: .*' "$OUT/train-small.log" | tail -1)"
perf="$(grep 'step     40 ' "$OUT/train-small.log" | sed 's/.*grad norm [0-9.]* | //')"
row "train small bf16 (40 steps)" "$([ $rc -eq 0 ] && echo PASS || echo FAIL)" "${last:-loss from $first: no result} | $perf"

# 3. the attention kernel libtorch chose for that run
attn="$(grep -o 'attention: .*' "$OUT/train-small.log" | head -1)"
row "sdpa backend (small, bf16)" "$(echo "$attn" | grep -qE "flash|cudnn|efficient" && echo PASS || echo FAIL)" "${attn:-not reported} (fused: flash, cudnn or efficient; math is the unfused fallback)"

# 4. NCCL (world size 1) against no communication, same seed and data
common=(--config config/small.toml --set train.device=cuda --set train.steps=20 --set train.log_interval=5
        --set model.init_from=\"/tmp/gpu-small-init\" --set dist.bucket_mb=20)
# two runs without communication measure the GPU's own run-to-run noise (atomics, cuDNN)
timeout 300 "$B" train "${common[@]}" --set job.run_dir=\"/tmp/gpu-solo\" >"$OUT/train-solo.log" 2>&1
timeout 300 "$B" train "${common[@]}" --set job.run_dir=\"/tmp/gpu-solo2\" >"$OUT/train-solo2.log" 2>&1
timeout 300 "$B" train "${common[@]}" --set dist.backend=nccl --set job.run_dir=\"/tmp/gpu-nccl\" >"$OUT/train-nccl.log" 2>&1
rc=$?
grep -E "dist:|step " "$OUT/train-nccl.log" | head -3
cmp="$("$PY" - <<'PY'
import json
def rows(p):
    try:
        return [json.loads(l) for l in open(p)]
    except OSError:
        return []
a, a2, b = rows("/tmp/gpu-solo/metrics.jsonl"), rows("/tmp/gpu-solo2/metrics.jsonl"), rows("/tmp/gpu-nccl/metrics.jsonl")
rel = lambda p, q: max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(p, q))
if not a or len(a) != len(b) or len(a) != len(a2):
    print("FAIL no comparable runs (%d, %d vs %d steps)" % (len(a), len(a2), len(b)))
else:
    d, noise = rel(a, b), rel(a, a2)
    last = b[-1]
    during = sum(t < last["backward_end_ms"] - 0.01 for t in last["bucket_issue_ms"])
    print("%s max loss rel diff %.1e vs run-to-run noise %.1e over %d steps | %d of %d buckets issued before backward ended (%s ms, end %.1f ms) | comm wait %.2f ms"
          % ("PASS" if d <= max(3 * noise, 1e-6) else "FAIL", d, noise, len(a), during, len(last["bucket_issue_ms"]),
             ", ".join("%.1f" % t for t in last["bucket_issue_ms"]), last["backward_end_ms"], 1e3 * last["comm_wait_s"]))
PY
)"
[ $rc -eq 0 ] || { cmp="FAIL $(tail -3 "$OUT/train-nccl.log" | tr '\n' ' ')"; }
row "nccl world 1 vs none (small)" "${cmp%% *}" "${cmp#* }"

echo
echo "== gpu_check summary (${gpu:-no GPU}) =="
printf '%s\n' "${ROWS[@]}"
