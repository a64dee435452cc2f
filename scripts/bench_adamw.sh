#!/usr/bin/env bash
# The host AdamW (CPU runs and `train.optimizer_offload = "cpu"`) beside torch.optim.AdamW on
# the CPU, same buffer size, hyper-parameters and threads, in one run; a Markdown table with
# the ratios. Writes nothing; redirect it into notes/.
#   scripts/bench_adamw.sh [PARAMS_M] [STEPS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
M="${1:-64}"
STEPS="${2:-10}"
B=target/release/baichuan
PY=.venv/bin/python
CORES=$(nproc)
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $CORES cores, flags: $(grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "torch $($PY -c 'import torch; print(torch.__version__)'), $M M fp32 parameters, median of $STEPS updates"
echo
echo "| threads | implementation | ms per update | M params/s | baichuan / this |"
echo "|---|---|---|---|---|"
for T in 1 "$CORES"; do
  ours=$($B bench adamw --params-m "$M" --threads "$T" --steps "$STEPS" --json)
  theirs=$($PY scripts/reference/bench_adamw.py "$M" "$T" "$STEPS")
  $PY - "$T" "$ours" "$theirs" <<'PY'
import json, sys
t, ours = sys.argv[1], json.loads(sys.argv[2])
rows = [json.loads(l) for l in sys.argv[3].splitlines()]
name = "baichuan host AdamW" + (" (AVX2)" if ours["avx2"] else "")
print(f"| {t} | {name} | {ours['seconds'] * 1e3:.1f} | {ours['params_per_s'] / 1e6:.0f} | 1.00 |")
for r in rows:
    print(f"| {t} | torch.optim.AdamW {r['impl']} | {r['seconds'] * 1e3:.1f} | {r['params_per_s'] / 1e6:.0f} | "
          f"{ours['params_per_s'] / r['params_per_s']:.2f} |")
PY
done
