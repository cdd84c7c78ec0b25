"""task_step against torch.sub at Conv4's size (112,261 parameters) for T tasks (default 32), the
variants alternating call by call so that none gets a better allocator or cache state than the
others (sequential pytest-benchmark cases can).  Usage: python benchmarks/interleaved_task_step.py [T]
"""

import statistics
import sys
import time

import torch

from metareg import ops

T = int(sys.argv[1]) if len(sys.argv) > 1 else 32
P, LR, ROUNDS, WARMUP = 112_261, 0.4, 400, 300

torch.manual_seed(0)
theta, grads = torch.randn(P), torch.randn(T, P)
variants = {
    "metareg.ops.task_step": lambda: ops.task_step(theta, grads, LR),
    "torch.sub": lambda: torch.sub(theta, grads, alpha=LR),
    "the op directly": lambda: torch.ops.metareg.task_step(theta, grads, LR),
}
for fn in variants.values():
    for _ in range(WARMUP):
        fn()
times: dict[str, list[float]] = {k: [] for k in variants}
order = list(variants.items())
for r in range(ROUNDS):
    k = r % len(order)  # every variant takes every position in turn
    for name, fn in order[k:] + order[:k]:
        t0 = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - t0)
for name, v in times.items():
    print(f"{name:22s} median {statistics.median(v) * 1e6:7.1f} us   min {min(v) * 1e6:7.1f} us")
base = statistics.median(times["torch.sub"])
for name in ("metareg.ops.task_step", "the op directly"):
    print(f"torch.sub / {name}: {base / statistics.median(times[name]):.3f} (median)")
