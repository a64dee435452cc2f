#!/usr/bin/env python3
"""Independent oracle for the flat AdamW: torch.optim.AdamW (the single-tensor algorithm,
foreach=False) on the parameters and per-step gradients the Rust test wrote, with weight
decay on 2-D parameters only (two parameter groups), then writes the final parameters.

usage: adamw_oracle.py DIR   (reads DIR/adamw_in.safetensors, writes DIR/adamw_out.safetensors)
hyper-parameters come from the tensor "hparams" = [lr, beta1, beta2, eps, weight_decay, steps, grad_scale];
each gradient is multiplied by grad_scale (a clip coefficient) in fp32 before the step
"""
import sys

import torch
from safetensors.torch import load_file, save_file

d = sys.argv[1]
t = load_file(f"{d}/adamw_in.safetensors")
lr, b1, b2, eps, wd, steps, grad_scale = t["hparams"].tolist()
grad_scale = torch.tensor(grad_scale, dtype=torch.float32)
names = sorted(k[len("param."):] for k in t if k.startswith("param."))
params = {n: torch.nn.Parameter(t["param." + n].clone()) for n in names}
groups = [
    {"params": [params[n] for n in names if params[n].dim() >= 2], "weight_decay": wd},
    {"params": [params[n] for n in names if params[n].dim() < 2], "weight_decay": 0.0},
]
opt = torch.optim.AdamW(groups, lr=lr, betas=(b1, b2), eps=eps, foreach=False)
for s in range(int(steps)):
    for n in names:
        params[n].grad = t[f"grad{s}.{n}"] * grad_scale
    opt.step()
save_file({n: params[n].detach().contiguous() for n in names}, f"{d}/adamw_out.safetensors")
print("ok")
