#!/usr/bin/env python3
"""Oracle for the sampling pipeline: Hugging Face transformers' own logits processors.

Reads `in.safetensors` from DIR ("logits" (N, V) fp32, "seen" (N, S) int64) and the settings
from the command line, applies RepetitionPenaltyLogitsProcessor, then (temperature > 0)
TemperatureLogitsWarper, TopKLogitsWarper and TopPLogitsWarper, in the order `generate()`
applies them, row by row, and writes "processed" (N, V) to `out.safetensors` in DIR.

usage: logits_processors.py DIR TEMPERATURE TOP_K TOP_P REPETITION_PENALTY
"""
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


def main():
    d, temperature, top_k, top_p, penalty = sys.argv[1:6]
    temperature, top_k, top_p, penalty = float(temperature), int(top_k), float(top_p), float(penalty)
    t = load_file(f"{d}/in.safetensors")
    procs = LogitsProcessorList()
    if penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(penalty))
    if temperature > 0:
        procs.append(TemperatureLogitsWarper(temperature))
        if top_k > 0:
            procs.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p))
    rows = []
    for logits, seen in zip(t["logits"], t["seen"]):
        rows.append(procs(seen.view(1, -1), logits.view(1, -1).clone())[0])
    save_file({"processed": torch.stack(rows).contiguous()}, f"{d}/out.safetensors")


if __name__ == "__main__":
    main()
