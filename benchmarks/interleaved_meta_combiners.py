"""The cost of a combiner or the task discriminator over the plain meta-step, measured interleaved:
the plain step and every variant of one setting alternate step by step (each taking every position
in turn), so load from other processes on a shared machine hits all of them alike; the ratio is
the median over rounds of (variant step / plain step in the same round).  Same settings and
variants as benchmarks/bench_meta_combiners.py (whose sequential pytest-benchmark cases drift by
+-40% on a loaded machine).

    OMP_NUM_THREADS=1 python benchmarks/interleaved_meta_combiners.py [--rounds N] [SETTING ...]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_meta_combiners as B  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("settings", nargs="*", default=list(B.SETTINGS))
    ap.add_argument("--rounds", type=int, default=0, help="rounds per setting (0: 8 for Conv4, 60 for MLPs)")
    args = ap.parse_args()
    print("| setting | variant | plain step (median) | variant step (median) | variant / plain (median of rounds) |")
    print("|---|---|---|---|---|")
    for setting in args.settings:
        # Conv4's vmap-jacobian step (T backward passes, 6-10x) would take most of the time: the
        # pytest-benchmark file measures it
        names = ["plain", *(v for v in B.VARIANTS[setting] if not ("conv4" in setting and v.startswith("vmap")))]
        built = {}
        for v in names:
            run, batches = B._build(setting, v)
            fn = B._vmap_step if v == "vmap jacobian, mean" else None
            built[v] = (run.learner, run.optimizer, itertools.cycle(batches), fn)

        def step(v):
            learner, opt, it, fn = built[v]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            (fn or (lambda lr, b: lr.step(b)))(learner, next(it))
            opt.step()
            return time.perf_counter() - t0

        for v in names:  # warm-up
            step(v)
        rounds = args.rounds or (8 if "conv4" in setting else 60)
        times = {v: [] for v in names}
        for r in range(rounds):
            k = r % len(names)
            for v in names[k:] + names[:k]:
                times[v].append(step(v))
        plain = times["plain"]
        for v in names[1:]:
            ratio = statistics.median(t / p for t, p in zip(times[v], plain))
            print(f"| {setting} | {v} | {statistics.median(plain) * 1e3:.1f} ms | {statistics.median(times[v]) * 1e3:.1f} ms "
                  f"| {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
