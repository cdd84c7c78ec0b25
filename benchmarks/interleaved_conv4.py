"""The Conv4 MAML step against the per-task loop, interleaved: one step of each, in turn.

`bench_maml_conv4.py` times metareg's rounds, then the loop's; on a shared VM the machine's speed
drifts between the two blocks (the loop's median moved 4.7-5.6 s between runs here).  This runs
them alternately in one process, so each pair sees the same machine, and reports the ratio of
each pair and their median.  Same step, shapes and recipe as `bench_maml_conv4.py` (it imports
them).

    python benchmarks/interleaved_conv4.py [--pairs 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_maml_conv4 as b  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8)
    args = ap.parse_args(argv)
    ep = b._Episodes()
    metareg_step, loop_step = b.metareg_step(ep), b.loop_step(ep)

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    metareg_step(), loop_step()  # warm-up
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; s per outer step")
    print("| pair | metareg | per-task loop | loop / metareg |\n|---|---|---|---|")
    ratios, ms, ls = [], [], []
    for i in range(args.pairs):
        m, lp = timed(metareg_step), timed(loop_step)
        ms.append(m), ls.append(lp), ratios.append(lp / m)
        print(f"| {i + 1} | {m:.3f} | {lp:.3f} | {lp / m:.2f}x |", flush=True)
    print(f"median: metareg {statistics.median(ms):.3f} s, loop {statistics.median(ls):.3f} s, "
          f"ratio of medians {statistics.median(ls) / statistics.median(ms):.2f}x, "
          f"median of pair ratios {statistics.median(ratios):.2f}x (min {min(ratios):.2f}x, max {max(ratios):.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
