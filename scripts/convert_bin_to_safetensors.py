#!/usr/bin/env python3
"""Convert a Hugging Face directory of `pytorch_model.bin` pickles (the form Baichuan-7B is
published in: one file, or shards listed in `pytorch_model.bin.index.json`) into
`model.safetensors` (or `model-0000k-of-0000n.safetensors` shards plus
`model.safetensors.index.json`), which `baichuan` reads. A one-off conversion, never on the
training path. config.json, tokenizer.model and other small files are copied as they are.

The pickles are loaded with `weights_only=True`, so a malicious file cannot run code.

usage: convert_bin_to_safetensors.py SRC_DIR DST_DIR
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file


def main(src, dst):
    os.makedirs(dst, exist_ok=True)
    index_path = os.path.join(src, "pytorch_model.bin.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
        shards = sorted(set(index["weight_map"].values()))
    elif os.path.exists(os.path.join(src, "pytorch_model.bin")):
        shards = ["pytorch_model.bin"]
    else:
        sys.exit(f"{src}: no pytorch_model.bin or pytorch_model.bin.index.json")

    weight_map, total = {}, 0
    n = len(shards)
    for i, shard in enumerate(shards):
        state = torch.load(os.path.join(src, shard), map_location="cpu", weights_only=True)
        # safetensors wants contiguous tensors that share no storage
        state = {k: v.contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
        name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file(state, os.path.join(dst, name), metadata={"format": "pt"})
        for k, v in state.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
        print(f"{shard} -> {name}: {len(state)} tensors")
    if n > 1:
        with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    for entry in os.listdir(src):
        if entry.startswith("pytorch_model") or os.path.isdir(os.path.join(src, entry)):
            continue
        if os.path.abspath(os.path.join(src, entry)) != os.path.abspath(os.path.join(dst, entry)):
            shutil.copy(os.path.join(src, entry), dst)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
