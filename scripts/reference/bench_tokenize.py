#!/usr/bin/env python3
"""Peer for `scripts/bench_data.sh`: Python `sentencepiece` encodes the same files, one
document per line, with the same number of threads (its batched C++ encoder,
`encode(list, num_threads=N)`), and prints one JSON line with MB/s and token counts.

usage: bench_tokenize.py TOKENIZER.model THREADS FILE...
"""
import json
import sys
import time

import sentencepiece as spm

sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
threads = int(sys.argv[2])
files = sys.argv[3:]
start = time.perf_counter()
total_bytes = tokens = docs = 0
for path in files:
    with open(path, "rb") as f:
        data = f.read()
    total_bytes += len(data)
    lines = [l for l in data.decode("utf-8", errors="replace").split("\n") if l.strip()]
    batch = 4096
    for i in range(0, len(lines), batch):
        for ids in sp.encode(lines[i:i + batch], num_threads=threads):
            tokens += len(ids) + 1  # + EOS, as baichuan counts
        docs += len(lines[i:i + batch])
seconds = time.perf_counter() - start
print(json.dumps({"mb_per_s": total_bytes / 1e6 / seconds, "seconds": seconds, "bytes": total_bytes, "tokens": tokens, "documents": docs}))
