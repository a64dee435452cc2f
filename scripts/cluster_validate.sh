#!/usr/bin/env bash
# Validation of the cluster step-time model (`baichuan info --gpu`, trainer/src/tools/cluster.rs)
# against everything measurable here or published, in one run; the raw output is the notes file.
#  1. this machine's TCP ring: the ring's latency and bandwidth fitted to the all-gather at 2
#     and 3 local ranks, and the model's reduce-scatter and all-reduce times beside the measured;
#  2. a 2-rank CPU `train` run of the tiny preset: the model's exposed communication per step
#     (its buckets at the recorded issue times) beside the recorded wait;
#  3. the bucket layout and readiness the model gives `small` on one H100, to set beside the
#     issue times recorded on an H100 (notes/gpu-2026-11-27.md);
#  4. the published end-to-end MFU figures (Baichuan-7B, MPT-7B, Megatron-LM, torchtitan);
#  5. a node sweep of the 7B on A800s with its PNG (docs/img/cluster-sweep-a800.png).
#   scripts/cluster_validate.sh > notes/cluster-$(date +%F).md
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
B=target/release/baichuan
echo "# Cluster step-time model: validation, $(date +%F)"
echo
echo "Machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores. Command: \`scripts/cluster_validate.sh\`."
echo
echo '## 1. The TCP ring on this machine (`bench comm --model`)'
for n in 2 3; do
  echo
  echo '```'
  $B bench comm --nproc $n --model --max-mb 64 2>&1 | grep -v '^ring:'
  echo '```'
done
echo
echo '## 2. Exposed communication of a 2-rank CPU training run (tiny, 2 buckets of fp32)'
RUN=/tmp/baichuan-cluster-validate
rm -rf "$RUN"
$B launch --nproc 2 --master-port 0 --config config/tiny.toml --set job.run_dir=\""$RUN"\" --set train.steps=20 \
  --set train.log_interval=100 --set data.valid_fraction=0.0 --set train.device=\"cpu\" --set train.micro_batch_size=8 \
  --set train.global_batch_size=16 --set dist.bucket_mb=4 --set checkpoint.interval_steps=0 >/dev/null 2>&1
echo
echo '```'
$B bench comm --nproc 2 --model --max-mb 16 --run "$RUN" 2>&1 | sed -n '/^run /,$p'
echo '```'
rm -rf "$RUN"
echo
echo '## 3. Bucket readiness of `small` on one H100 (model), for the recorded issue times'
echo
echo '```'
$B info --config config/small.toml --gpu H100 --gpus-per-node 1 --buckets --set train.global_batch_size=32 2>&1 \
  | sed -n '/^step-time model/,$p'
echo '```'
echo
echo '## 4. Published figures (`info --published`)'
echo
$B info --published
echo
echo '## 5. The 7B on A800 nodes, ZeRO 2, 1 x 4096 per GPU per step (`info --sweep-nodes`)'
echo
echo '```'
$B info --config config/baichuan-7b.toml --gpu A800 --nodes 1 --zero-stage 2 --set train.global_batch_size=8 \
  --sweep-nodes 128 --plot docs/img/cluster-sweep-a800.png 2>&1 | sed -n '/^step-time model/,$p'
echo '```'
