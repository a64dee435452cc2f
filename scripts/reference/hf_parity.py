#!/usr/bin/env python3
"""Independent oracle for the model: Hugging Face transformers' LlamaForCausalLM.

Loads a model directory exported by `baichuan` in LLaMA layout (no custom code), recomputes
in fp32 with transformers' eager attention the logits, the mean next-token loss, every
parameter gradient and a greedy generation, and compares them with what the Rust side wrote
to `rust.safetensors` in the same directory. Prints one JSON line with the differences; the
Rust test asserts the tolerances.

usage: hf_parity.py MODEL_DIR [--device cpu|cuda]
"""
import argparse
import json

import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(args.device)

    rust = load_file(f"{args.model_dir}/rust.safetensors")
    model = LlamaForCausalLM.from_pretrained(
        args.model_dir, dtype=torch.float32, attn_implementation="eager"
    ).to(dev)
    model.train()  # no dropout in this architecture; enables grads everywhere

    ids = rust["ids"].to(dev)  # (B, T+1)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    logits = out.logits.detach()  # (B, T+1, V)

    rust_logits = rust["logits"].to(dev).float()
    logits_max_abs = (logits - rust_logits).abs().max().item()
    logits_rel = ((logits - rust_logits).norm() / logits.norm()).item()
    loss = out.loss.item()
    rust_loss = rust["loss"].item()
    loss_rel = abs(loss - rust_loss) / abs(loss)

    params = dict(model.named_parameters())
    worst_name, worst = None, 0.0
    checked = 0
    for key, rust_grad in rust.items():
        if not key.startswith("grad."):
            continue
        name = key[len("grad."):]
        if name.endswith(".self_attn.W_pack.weight"):
            prefix = name[: -len("W_pack.weight")]
            ref = torch.cat([params[prefix + p + "_proj.weight"].grad for p in "qkv"], 0)
        else:
            ref = params[name].grad
        rel = ((ref - rust_grad.to(dev).float()).norm() / ref.norm().clamp_min(1e-30)).item()
        checked += 1
        if rel > worst or worst_name is None:
            worst_name, worst = name, rel

    result = {
        "logits_max_abs": logits_max_abs,
        "logits_rel": logits_rel,
        "loss": loss,
        "rust_loss": rust_loss,
        "loss_rel": loss_rel,
        "grad_rel_max": worst,
        "grad_worst": worst_name,
        "grads_checked": checked,
    }
    if "prompt" in rust:
        prompt = rust["prompt"].to(dev).view(1, -1)
        n_new = rust["generated"].numel()
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0
        with torch.no_grad():
            gen = model.generate(prompt, max_new_tokens=n_new, do_sample=False)
        hf_new = gen[0, prompt.shape[1]:].tolist()
        result["hf_generated"] = hf_new
        result["generate_equal"] = hf_new == rust["generated"].tolist()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
