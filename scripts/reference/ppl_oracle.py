#!/usr/bin/env python3
"""Oracle for `eval ppl`: transformers' LlamaForCausalLM (fp32, eager attention) on the same
token shard, with the same windows: `seq_len + 1` tokens overlapping by one, so every token
after the first is predicted once; the last, shorter window included; the first MAX_TOKENS
tokens only. The shard is read directly (64-byte header: magic, version, bytes per token at
offset 12, token count at offset 24; then little-endian ids).

usage: ppl_oracle.py LLAMA_DIR SHARD MAX_TOKENS SEQ_LEN
Prints {"tokens", "predicted_tokens", "windows", "loss", "ppl"} as one JSON line.
"""
import json
import math
import struct
import sys

import numpy as np
import torch
from transformers import LlamaForCausalLM


def main():
    model_dir, shard, max_tokens, seq_len = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    raw = open(shard, "rb").read()
    assert raw[:8] == b"BCHTOKS\0", "not a token shard"
    width = struct.unpack_from("<I", raw, 12)[0]
    count = struct.unpack_from("<Q", raw, 24)[0]
    ids = np.frombuffer(raw[64:64 + count * width], dtype="<u2" if width == 2 else "<u4").astype(np.int64)
    n = min(max_tokens, count)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    total, predicted, windows, start = 0.0, 0, 0, 0
    with torch.no_grad():
        while start + 1 < n:
            t = min(seq_len, n - 1 - start)
            x = torch.from_numpy(ids[start:start + t + 1].copy()).view(1, -1)
            logits = model(input_ids=x[:, :-1]).logits[0].double()
            nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
            total += nll
            predicted += t
            windows += 1
            start += t
    loss = total / predicted
    print(json.dumps({"tokens": n, "predicted_tokens": predicted, "windows": windows, "loss": loss, "ppl": math.exp(loss)}))


if __name__ == "__main__":
    main()
