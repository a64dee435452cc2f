#!/usr/bin/env bash
# Runs every test: set-up first (venv, tokenizer, build), then the style gates (rustfmt and
# clippy with warnings as errors, over every target), then the whole workspace's unit and
# integration tests in the release profile (the oracles run in .venv's Python), and a count of
# the tests that could not run on this machine (CUDA ones), with their reasons.
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
# the tests' output is kept to count, at the end, the tests this machine did not run, and why
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
cargo test --release --workspace "$@" 2>&1 | tee "$LOG"
not_run="$(grep -E '^test .* \.\.\. ignored' "$LOG" || true)"
if [ -n "$not_run" ]; then
  echo
  echo "[test] not run here: $(echo "$not_run" | wc -l) test(s) (they count as neither passed nor failed):"
  echo "$not_run" | sed -E 's/^test (.*) \.\.\. ignored,? ?/  \1: /'
  echo "[test] scripts/gpu_check.sh runs them on a CUDA machine"
else
  echo "[test] every test ran"
fi
