"""task_step vs torch.sub at Conv4 T (default 32), the variants alternating call by call so none
gets a better allocator or cache state than the others.  Usage: python benchmarks/interleaved_task_step.py [T]"""
import time, statistics, sys, torch
from metareg import ops
torch.manual_seed(0)
T, P, LR = int(sys.argv[1]) if len(sys.argv) > 1 else 32, 112261, 0.4
theta = torch.randn(P); grads = torch.randn(T, P)
fns = {"metareg": lambda: ops.task_step(theta, grads, LR),
       "torch.sub": lambda: torch.sub(theta, grads, alpha=LR),
       "_C direct": lambda: torch.ops.metareg.task_step(theta, grads, LR)}
for f in fns.values():
    for _ in range(300): f()
times = {k: [] for k in fns}
for r in range(400):
    for k, f in (fns.items() if r % 2 == 0 else reversed(list(fns.items()))):
        t0 = time.perf_counter(); f(); times[k].append(time.perf_counter() - t0)
for k, v in times.items():
    print(f"{k:10s} median {statistics.median(v)*1e6:7.1f} us  min {min(v)*1e6:7.1f} us")
print("ratio torch.sub/metareg (median):", statistics.median(times["torch.sub"]) / statistics.median(times["metareg"]))
