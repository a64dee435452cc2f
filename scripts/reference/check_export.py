#!/usr/bin/env python3
"""Independent reader of what `baichuan export` and `baichuan generate` produce.

- The Baichuan-layout model directory (one safetensors file, fused `W_pack`) is read with
  Python `safetensors` and torch only: each `W_pack` is cut into q, k and v (rows [0, h),
  [h, 2h), [2h, 3h)), and every weight is compared with the LLaMA-layout export read by
  transformers' `LlamaForCausalLM.from_pretrained` (sharded, in its own dtype): equal after
  rounding the Baichuan weights to that dtype.
- A second LLaMA export in fp32 is loaded by transformers, which generates greedily from the
  prompt's ids with `repetition_penalty` (its own logits processor); the ids are printed for the
  Rust test to compare with `generate --ids`.

usage: check_export.py BAICHUAN_DIR LLAMA_DIR LLAMA_FP32_DIR PROMPT_IDS(comma) MAX_NEW PENALTY
Prints one JSON line.
"""
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM


def main():
    baichuan_dir, llama_dir, fp32_dir, prompt, max_new, penalty = sys.argv[1:7]
    ours = load_file(f"{baichuan_dir}/model.safetensors")
    with open(f"{baichuan_dir}/config.json") as f:
        hidden = json.load(f)["hidden_size"]
    split = {}
    for name, t in ours.items():
        if name.endswith(".self_attn.W_pack.weight"):
            prefix = name[: -len("W_pack.weight")]
            for i, p in enumerate("qkv"):
                split[f"{prefix}{p}_proj.weight"] = t[i * hidden:(i + 1) * hidden]
        else:
            split[name] = t
    llama = LlamaForCausalLM.from_pretrained(llama_dir)
    theirs = dict(llama.named_parameters())
    dtype = next(iter(theirs.values())).dtype
    mismatched = [n for n, t in split.items() if n not in theirs or not torch.equal(t.to(dtype), theirs[n].data)]
    missing = [n for n in theirs if n not in split]

    model = LlamaForCausalLM.from_pretrained(fp32_dir, dtype=torch.float32, attn_implementation="eager")
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    ids = torch.tensor([[int(x) for x in prompt.split(",")]])
    with torch.no_grad():
        gen = model.generate(
            ids, max_new_tokens=int(max_new), do_sample=False, repetition_penalty=float(penalty)
        )
    print(json.dumps({
        "weights_compared": len(split),
        "llama_dtype": str(dtype),
        "mismatched": mismatched,
        "missing": missing,
        "generated": gen[0, ids.shape[1]:].tolist(),
    }))


if __name__ == "__main__":
    main()
