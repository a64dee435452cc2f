#!/usr/bin/env bash
# Communication benchmark on this machine, in one run:
#  1. `baichuan bench comm --backend tcp`: all-reduce bus bandwidth across message sizes,
#     beside the memory-copy and loopback-TCP ceilings measured in the same run;
#  2. training tokens/s of the tiny preset at 2 ranks against 1 rank (scaling efficiency;
#     the ranks share this machine's cores, so 2 ranks get half the cores each).
#   scripts/bench_comm.sh [STEPS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STEPS="${1:-30}"
B=target/release/baichuan
$B bench comm --backend tcp --nproc 2
COMMON=(--config config/tiny.toml --set train.steps="$STEPS" --set train.log_interval=1000
        --set data.valid_fraction=0.0 --set train.device=cpu --set train.micro_batch_size=8 --set train.global_batch_size=16)
median_tps() {  # median tokens/s over the second half of the steps
  .venv/bin/python - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(statistics.median(r["tokens_per_s"] for r in rows[len(rows) // 2:]))
PY
}
for n in 1 2; do
  $B launch --nproc $n --master-port 0 "${COMMON[@]}" --set job.run_dir=/tmp/baichuan-bench-comm-$n >/dev/null
done
one=$(median_tps /tmp/baichuan-bench-comm-1/metrics.jsonl)
two=$(median_tps /tmp/baichuan-bench-comm-2/metrics.jsonl)
.venv/bin/python -c "print('training tokens/s: 1 rank %.0f, 2 ranks %.0f, scaling efficiency %.0f%%' % ($one, $two, 100 * $two / $one))"
