#!/usr/bin/env bash
# The main job: trains CONFIG (default config/tiny.toml: the tiny preset on the bundled
# sample; on CPU, or on the GPU when libtorch sees one). Extra arguments go to `baichuan train`,
# e.g. scripts/train.sh config/tiny.toml --set train.steps=50
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
CONFIG="${1:-config/tiny.toml}"
shift || true
exec target/release/baichuan train --config "$CONFIG" "$@"
