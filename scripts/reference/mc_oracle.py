#!/usr/bin/env python3
"""Oracle for `eval mc` scoring: transformers' LlamaForCausalLM (fp32, eager attention) reads
each prompt `eval mc --dump-prompts` wrote, tokenized by Python sentencepiece (no BOS), and
predicts the letter whose first token ("A".."D" alone) has the largest logit at the last
position, as the reference scripts do.

usage: mc_oracle.py LLAMA_DIR TOKENIZER_MODEL DUMP.jsonl
Prints {"predictions": {subject: "ABCD..."}, "margins": {subject: [top1 - top2 logit, ...]}}.
"""
import json
import sys

import sentencepiece as spm
import torch
from transformers import LlamaForCausalLM


def main():
    model_dir, tok_path, dump = sys.argv[1:4]
    sp = spm.SentencePieceProcessor(model_file=tok_path)
    letters = [sp.encode(l)[0] for l in "ABCD"]
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    preds, margins = {}, {}
    with torch.no_grad():
        for line in open(dump, encoding="utf-8"):
            d = json.loads(line)
            ids = torch.tensor([sp.encode(d["text"])])
            logits = model(input_ids=ids).logits[0, -1, letters].double()
            top = torch.topk(logits, 2).values
            preds[d["subject"]] = preds.get(d["subject"], "") + "ABCD"[int(logits.argmax())]
            margins.setdefault(d["subject"], []).append(float(top[0] - top[1]))
    print(json.dumps({"predictions": preds, "margins": margins}))


if __name__ == "__main__":
    main()
