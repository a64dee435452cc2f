#!/usr/bin/env python3
"""Independent oracle for document masking: each document through Hugging Face transformers alone.

Loads a model directory exported by `baichuan` in LLaMA layout with transformers'
`LlamaForCausalLM` (fp32, eager attention, no custom code) and runs every document of
`documents.safetensors` in that directory (tensors `doc.0`, `doc.1`, ...: 1-D int64 ids) as
its own sequence, from position 0 with plain causal attention: what a packed row with document
masking must reproduce for each of its documents (model/tests/documents.rs compares).
Prints one JSON line: {"documents": [logits of doc.0 (T0 x V), logits of doc.1, ...]}.

usage: doc_mask_oracle.py MODEL_DIR
"""
import argparse
import json

import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    args = ap.parse_args()
    docs = load_file(f"{args.model_dir}/documents.safetensors")
    model = LlamaForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(len(docs)):
            ids = docs[f"doc.{i}"].view(1, -1)
            out.append(model(input_ids=ids).logits[0].tolist())
    print(json.dumps({"documents": out}))


if __name__ == "__main__":
    main()
