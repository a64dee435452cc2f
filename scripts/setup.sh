#!/usr/bin/env bash
# One-time (and idempotent) set-up on a fresh Debian machine: cmake, a Python venv with
# libtorch (torch==2.11.0) and the reference-test packages (transformers; datasketch, datatrove
# and fasttext for the curation oracles), the Baichuan-7B tokenizer rebuilt
# from llama.cpp's vocabulary file, and a release build of `baichuan`.
# Quick when already done. Set LIBTORCH=/path/to/libtorch to build against your own libtorch.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[setup] %s\n' "$*" >&2; }

# --- system packages: cmake builds the sentencepiece C++ library ---
if ! command -v cmake >/dev/null 2>&1 || ! command -v c++ >/dev/null 2>&1; then
  log "installing cmake and a C++ compiler"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cmake g++ >/dev/null
fi
command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ] || {
  echo "[setup] no Rust toolchain: install one with rustup (https://rustup.rs), then rerun" >&2; exit 1; }

# --- Python venv: libtorch for tch, and the independent oracles used by the tests ---
REQS="torch==2.11.0 transformers==5.24.0 safetensors==0.8.0 sentencepiece==0.2.3 gguf==0.19.0 protobuf==7.36.2 numpy==2.4.6 tensorboard==2.20.0 pillow==12.0.0 datasketch==2.0.0 datatrove==0.10.1 regex==2026.11.19 fasttext-wheel==0.9.2 xxhash==4.1.0"
STAMP=.venv/.baichuan-reqs
if [ ! -x .venv/bin/python ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$REQS" ]; then
  log "creating .venv with: $REQS (torch is ~4.6 GB with its CUDA wheels)"
  python3 -m venv .venv
  # shellcheck disable=SC2086
  .venv/bin/pip install -q --disable-pip-version-check $REQS
  echo "$REQS" > "$STAMP"
fi

# --- the Baichuan-7B tokenizer, rebuilt from llama.cpp's vocabulary test file ---
TOKENIZER=assets/tokenizer.model
TOKENIZER_SHA=55126e3ba8e786f3b5364b9a7764711a50422c000b711e48915801f1d3fdcd90
if [ ! -f "$TOKENIZER" ] || [ "$(sha256sum "$TOKENIZER" | cut -d' ' -f1)" != "$TOKENIZER_SHA" ]; then
  log "rebuilding the Baichuan-7B tokenizer from llama-cpp-python's source distribution"
  mkdir -p assets .cache/llama
  if [ ! -f .cache/llama/ggml-vocab-baichuan.gguf ]; then
    .venv/bin/pip download -q --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
      llama-cpp-python==0.3.36 -d .cache/llama
    tar -xzf .cache/llama/llama_cpp_python-0.3.36.tar.gz -C .cache/llama --strip-components=4 \
      llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-baichuan.gguf
    rm -f .cache/llama/llama_cpp_python-0.3.36.tar.gz
  fi
  .venv/bin/python scripts/make_tokenizer.py .cache/llama/ggml-vocab-baichuan.gguf "$TOKENIZER"
  got=$(sha256sum "$TOKENIZER" | cut -d' ' -f1)
  [ "$got" = "$TOKENIZER_SHA" ] || { echo "[setup] $TOKENIZER has sha256 $got, expected $TOKENIZER_SHA" >&2; exit 1; }
fi

# --- build ---
# shellcheck source=scripts/env.sh
source "$ROOT/scripts/env.sh"
log "building baichuan (release)"
cargo build --release --quiet
log "ready: target/release/baichuan"
