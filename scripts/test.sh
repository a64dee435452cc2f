#!/usr/bin/env bash
# Runs every test: set-up first (venv, tokenizer, build), then the style gates (rustfmt and
# clippy with warnings as errors, over every target), then the whole workspace's unit and
# integration tests in the release profile (the oracles run in .venv's Python).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh
echo "[test] cargo fmt --check" >&2
cargo fmt --all --check
echo "[test] cargo clippy --all-targets -D warnings" >&2
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
cargo test --release --workspace "$@"
