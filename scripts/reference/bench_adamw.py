"""The peer of `baichuan bench adamw`: torch.optim.AdamW on the CPU over one flat fp32
parameter of the same size, with the same hyper-parameters and threads, in its three
implementations (fused: the `_fused_adamw_` CPU kernel; foreach; single-tensor). Prints one
JSON object per implementation: median seconds per step() and parameters per second.

    python scripts/reference/bench_adamw.py PARAMS_M THREADS STEPS
"""
import json
import statistics
import sys
import time

import torch

params_m, threads, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
n = params_m * 1_000_000
for impl in ["fused", "foreach", "single"]:
    p = torch.nn.Parameter(torch.full((n,), 0.5))
    p.grad = ((torch.arange(n) % 1999).float() - 999.0) * 1e-3
    kw = {"fused": dict(fused=True), "foreach": dict(foreach=True), "single": dict(foreach=False)}[impl]
    opt = torch.optim.AdamW([p], lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, **kw)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        opt.step()
        if i > 0:
            times.append(time.perf_counter() - t)
    s = statistics.median(times)
    print(json.dumps({"impl": impl, "params": n, "threads": threads, "seconds": s, "params_per_s": n / s}))
