#!/usr/bin/env python3
"""Independent oracle for the tokenizer: Python `sentencepiece` encodes each text of a JSON
list and prints one JSON line {"ids": [[...], ...], "decoded": [...]}.

usage: sp_encode.py TOKENIZER.model TEXTS.json
"""
import json
import sys

import sentencepiece as spm

sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
texts = json.load(open(sys.argv[2], encoding="utf-8"))
ids = [sp.encode(t) for t in texts]
print(json.dumps({"ids": ids, "decoded": [sp.decode(i) for i in ids]}, ensure_ascii=False))
