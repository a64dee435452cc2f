#!/usr/bin/env python3
"""Independent reader of a model directory's weights: Python `safetensors` (and torch for the
dtype), not baichuan's reader. Reads `model.safetensors`, or every shard that
`model.safetensors.index.json` names (checking that the index names each weight's shard), and
prints one JSON object: name -> [shape, dtype, CRC-32 of the raw little-endian bytes].

usage: read_safetensors.py MODEL_DIR
"""
import json
import os
import sys
import zlib

import torch
from safetensors.torch import load_file


def main():
    d = sys.argv[1]
    index = os.path.join(d, "model.safetensors.index.json")
    tensors = {}
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        for shard in sorted(set(weight_map.values())):
            for name, t in load_file(os.path.join(d, shard)).items():
                assert weight_map.get(name) == shard, f"{name} is in {shard}, the index says {weight_map.get(name)}"
                tensors[name] = t
        assert set(tensors) == set(weight_map), "the index and the shards disagree"
    else:
        tensors = load_file(os.path.join(d, "model.safetensors"))
    out = {}
    for name, t in tensors.items():
        raw = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        out[name] = [list(t.shape), str(t.dtype).replace("torch.", ""), zlib.crc32(raw)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
