#!/usr/bin/env python3
"""Oracle for tests only: converts a SentencePiece tokenizer.model to a Hugging Face tokenizer.json
with transformers' own converter (LlamaTokenizer.from_pretrained on a directory holding the model),
then counts the tokens of every document (line) of each input file with Python `tokenizers` (on the
tokenizer.json) and Python `sentencepiece` (on the model), special tokens off.

  spm_to_tokenizer_json.py tokenizer.model OUT_DIR FILE...
Prints {"files": {FILE: {"hf_tokens": n, "spm_tokens": m}}} and writes OUT_DIR/tokenizer.json.
"""
import json
import os
import shutil
import sys

import sentencepiece as spm
import tokenizers
from transformers import LlamaTokenizer

model, out, files = sys.argv[1], sys.argv[2], sys.argv[3:]
src = os.path.join(out, "spm")
os.makedirs(src, exist_ok=True)
shutil.copy(model, os.path.join(src, "tokenizer.model"))
LlamaTokenizer.from_pretrained(src, legacy=False, add_bos_token=False, add_eos_token=False).save_pretrained(out)
hf = tokenizers.Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
sp = spm.SentencePieceProcessor(model_file=model)
counts = {}
for f in files:
    h = s = 0
    for line in open(f, encoding="utf-8"):
        line = line.rstrip("\n").rstrip("\r")
        if not line.strip():
            continue
        h += len(hf.encode(line, add_special_tokens=False).ids)
        s += len(sp.encode(line))
    counts[f] = {"hf_tokens": h, "spm_tokens": s}
print(json.dumps({"files": counts}))
