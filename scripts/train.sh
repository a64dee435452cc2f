#!/usr/bin/env bash
# The main job: trains CONFIG (default config/tiny.toml: the tiny preset on the bundled
# sample; on CPU, or on the GPU when libtorch sees one) through `baichuan launch` with the
# hostfile beside this repository (HOSTFILE to use another), as the reference's
# scripts/train.sh runs deepspeed. Extra arguments go to every rank's `baichuan train`, e.g.
#   scripts/train.sh config/tiny.toml --set train.steps=50
#   HOSTFILE=my-cluster scripts/train.sh config/baichuan-7b.toml
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
CONFIG="${1:-config/tiny.toml}"
shift || true
exec target/release/baichuan launch --hostfile "${HOSTFILE:-hostfile}" --config "$CONFIG" "$@"
