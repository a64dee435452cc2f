#!/usr/bin/env python3
"""Peer for scripts/bench_vs_torch.sh: the same model shapes, batch, precision and threads
trained by PyTorch eager (transformers' LlamaForCausalLM with sdpa attention, which computes
the Baichuan-7B function; torch.optim.AdamW with decay on matrices only; clip 1.0), timed
like `baichuan bench`: warm-up steps, then the median of timed steps. bf16 and fp16 are
PyTorch's usual recipes: fp32 parameters and optimizer, autocast compute, and for fp16 a
GradScaler (initial scale 2^16, growth interval 1000). Memory: on CUDA both the allocator's
peak and the device's used memory as nvidia-smi reports it (what `baichuan bench` reports).

usage: bench_torch.py --hidden H --layers L --heads N --ffn F --vocab V --seq T --batch B
                      --dtype fp32|bf16 --device cpu|cuda [--steps 5] [--warmup 2] [--accum 1]
--accum N: N micro-batches of --batch sequences per optimizer step (gradient accumulation)
"""
import argparse
import json
import statistics
import subprocess
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ap = argparse.ArgumentParser()
for k in ["hidden", "layers", "heads", "ffn", "vocab", "seq", "batch"]:
    ap.add_argument(f"--{k}", type=int, required=True)
ap.add_argument("--dtype", default="fp32")
ap.add_argument("--device", default="cpu")
ap.add_argument("--steps", type=int, default=5)
ap.add_argument("--warmup", type=int, default=2)
ap.add_argument("--checkpointing", action="store_true")
ap.add_argument("--accum", type=int, default=1)
a = ap.parse_args()
dev = torch.device(a.device)
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers,
                  num_attention_heads=a.heads, num_key_value_heads=a.heads, max_position_embeddings=a.seq,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
cfg._attn_implementation = "sdpa"
model = LlamaForCausalLM(cfg).to(dev)
if a.checkpointing:
    model.gradient_checkpointing_enable()
model.train()
decay = [p for p in model.parameters() if p.dim() >= 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.dtype)
scaler = torch.amp.GradScaler(dev.type, init_scale=2.0**16, growth_interval=1000, enabled=a.dtype == "fp16")
times = []
for s in range(a.warmup + a.steps):
    ids = torch.randint(a.vocab, (a.accum, a.batch, a.seq + 1), device=dev)
    sync()
    t0 = time.perf_counter()
    for micro in range(a.accum):
        with torch.autocast(dev.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            logits = model(input_ids=ids[micro, :, :-1]).logits  # (B, T, V), as transformers' loss path upcasts
            loss = torch.nn.functional.cross_entropy(logits.float().view(-1, a.vocab), ids[micro, :, 1:].reshape(-1))
        del logits
        scaler.scale(loss / a.accum).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    sync()
    if s >= a.warmup:
        times.append(time.perf_counter() - t0)
step = statistics.median(times)
out = {"tokens_per_s": a.accum * a.batch * a.seq / step, "step_s": step, "threads": torch.get_num_threads()}
if dev.type == "cuda":
    out["allocator_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                           f"--id={torch.cuda.current_device()}"], capture_output=True, text=True).stdout.strip()
    out["peak_memory_mb"] = float(used) if used else out["allocator_peak_mb"]
print(json.dumps(out))
