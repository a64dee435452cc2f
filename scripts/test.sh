#!/usr/bin/env bash
# Runs every test: set-up first (venv, tokenizer, build), then the whole workspace's unit and
# integration tests in the release profile (the oracles run in .venv's Python).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh
cargo test --release --workspace "$@"
