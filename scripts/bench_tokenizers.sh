#!/usr/bin/env bash
# Baichuan's tokenizer table on a corpus: `baichuan tokenizer stats` for the Baichuan-7B tokenizer,
# LLaMA's (rebuilt from llama.cpp's ggml-vocab-llama-spm.gguf by scripts/make_tokenizer.py, checked
# against llama.cpp's 46 reference encodings) and one trained here with `baichuan tokenizer train`.
#   scripts/bench_tokenizers.sh [INPUT...]      (default: data/sample)
# Env: VOCAB (pieces of the tokenizer trained here; default 8000: the 1.9 MB sample holds no more
# useful pieces), NOTES (default notes/tokenizers-DATE.md). Needs target/release/baichuan and .venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
INPUTS=("$@"); [ ${#INPUTS[@]} -eq 0 ] && INPUTS=(data/sample)
VOCAB="${VOCAB:-8000}"
NOTES="${NOTES:-notes/tokenizers-$(date +%F).md}"
B=target/release/baichuan
CACHE=.cache/llama
mkdir -p "$CACHE"
LLAMA="$CACHE/llama-tokenizer.model"
if [ ! -f "$LLAMA" ]; then
  echo "[bench_tokenizers] rebuilding LLaMA's tokenizer from llama-cpp-python's source distribution" >&2
  .venv/bin/pip download -q --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
    llama-cpp-python==0.3.36 -d "$CACHE"
  M=llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf
  tar -xzf "$CACHE/llama_cpp_python-0.3.36.tar.gz" -C "$CACHE" --strip-components=4 "$M" "$M.inp" "$M.out"
  rm -f "$CACHE/llama_cpp_python-0.3.36.tar.gz"
  .venv/bin/python scripts/make_tokenizer.py "$CACHE/ggml-vocab-llama-spm.gguf" "$LLAMA"
fi
TRAINED=$(mktemp -d)
trap 'rm -rf "$TRAINED"' EXIT
"$B" tokenizer train --input "${INPUTS[@]}" --out "$TRAINED" --vocab-size "$VOCAB" 2>/dev/null | tail -1 >&2
TABLE=$("$B" tokenizer stats --tokenizer assets/tokenizer.model --tokenizer "$LLAMA" --tokenizer "$TRAINED/tokenizer.model" --input "${INPUTS[@]}")
echo "$TABLE"
{
  echo
  echo "## bench_tokenizers $(date '+%F %T') (inputs: ${INPUTS[*]})"
  echo
  echo "- machine: $(lscpu | grep 'Model name' | sed 's/Model name: *//'), nproc $(nproc); commit $(git rev-parse --short HEAD)"
  echo "- tokenizers: assets/tokenizer.model (Baichuan-7B), $LLAMA (LLaMA), and one of $VOCAB pieces trained on the inputs (a temporary directory)"
  echo
  echo "$TABLE"
} >> "$NOTES"
echo "[bench_tokenizers] appended to $NOTES" >&2
