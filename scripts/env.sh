# Sourced by the scripts: points the build at the libtorch inside .venv (or at $LIBTORCH).
# shellcheck shell=bash
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$ROOT/.venv/bin:$HOME/.cargo/bin:$PATH"
if [ -z "${LIBTORCH:-}" ]; then
  export LIBTORCH_USE_PYTORCH=1
fi
export LIBTORCH_BYPASS_VERSION_CHECK="${LIBTORCH_BYPASS_VERSION_CHECK:-0}"
export BAICHUAN_PYTHON="${BAICHUAN_PYTHON:-$ROOT/.venv/bin/python}"
