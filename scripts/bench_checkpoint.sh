#!/usr/bin/env bash
# Checkpoint I/O of the `small` preset (~104M parameters: 1.7 GB per checkpoint in fp32) on
# this machine's disk, for this build and, with OLD=/path/to/an/older/baichuan, for that binary
# in the same run:
#   - save: bytes of one checkpoint over the writer's own "writing took N ms" (checksums
#     included: format 1 read every file back for FNV-1a, format 2 computes CRC-32 as it writes);
#   - resume: wall time of `train` resuming with nothing left to train (verify, load the
#     state, write the final model directory), and this build's own "verified ... GB/s" line;
#     with OLD, this build also resumes the older binary's format-1 checkpoint, verifying it
#     with FNV-1a as that binary did (the same files, the same code path otherwise).
# The files were just written, so the page cache serves the reads: the checksum's own speed
# is measured, not the disk's (on a cold shared filesystem the read bandwidth bounds both).
#   scripts/bench_checkpoint.sh [REPEATS]  OLD=/tmp/baichuan-old scripts/bench_checkpoint.sh [REPEATS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NEW=target/release/baichuan
WORK="${WORK:-/tmp/baichuan-bench-checkpoint}"
ARGS=(--config config/small.toml --set train.steps=2 --set checkpoint.interval_steps=1
      --set checkpoint.async_save=false --set train.precision=fp32 --set train.device=cpu
      --set data.seq_len=64 --set train.micro_batch_size=1 --set train.global_batch_size=1
      --set data.valid_fraction=0.0 --set train.log_interval=1000)

measure() {  # label binary
  local label=$1 bin=$2 run="$WORK/$1"
  rm -rf "$run"
  local log="$WORK/$label-save.log"
  "$bin" train "${ARGS[@]}" --set job.run_dir="$run" --no-resume >"$log" 2>&1
  local bytes ms
  bytes=$(du -sb "$run/checkpoints/step-00000002" | cut -f1)
  # the last save (step 2); both builds print this line
  ms=$(grep -o 'writing took [0-9]* ms' "$log" | tail -1 | grep -o '[0-9]*')
  local t0 t1
  t0=$(date +%s.%N)
  "$bin" train "${ARGS[@]}" --set job.run_dir="$run" >"$WORK/$label-resume.log" 2>&1
  t1=$(date +%s.%N)
  local verified
  verified=$(grep -o 'verified .*' "$WORK/$label-resume.log" | head -1 || true)
  printf '%-5s checkpoint %.2f GB | save %6d ms = %5.2f GB/s | resume (verify + load + final model) %5.2f s | %s\n' \
    "$label" "$(echo "$bytes / 1000000000" | bc -l)" "$ms" "$(echo "$bytes / 1000000 / $ms" | bc -l)" \
    "$(echo "$t1 - $t0" | bc -l)" "${verified:-(no verification line in this build)}"
}

mkdir -p "$WORK"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(df -h "$WORK" | tail -1 | awk '{print $1}')"
for _ in $(seq "${1:-2}"); do  # interleaved repeats: this machine's disk varies run to run
  if [ -n "${OLD:-}" ]; then
    measure old "$OLD"
    # the older binary's checkpoint (format 1, FNV-1a) resumed by this build: it still loads, and
    # this build's verification line gives the FNV-1a rate on the same files
    "$NEW" train "${ARGS[@]}" --set job.run_dir="$WORK/old" >"$WORK/old-by-new.log" 2>&1
    echo "      format-1 checkpoint resumed by this build: $(grep -o 'verified .*' "$WORK/old-by-new.log" | head -1)"
  fi
  measure new "$NEW"
done
