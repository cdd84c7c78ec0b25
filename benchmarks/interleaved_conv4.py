"""The Conv4 MAML step against the per-task loop, interleaved: one step of each, in turn.

`bench_maml_conv4.py` times metareg's rounds, then the loop's; on a shared VM the machine's speed
drifts between the two blocks (the loop's median moved 4.7-5.6 s between runs here).  This runs
them alternately in one process, so each pair sees the same machine, and reports the ratio of
each pair and their median.  Same step, shapes and recipe as `bench_maml_conv4.py` (it imports
them).

    python benchmarks/interleaved_conv4.py [--pairs 8] [--whole]   # --whole: also task_parallel=false
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
    ap.add_argument("--whole", action="store_true",
                    help="also time metareg with task_parallel=false (the whole meta-batch, each op split across "
                         "the threads) in each round")
    args = ap.parse_args(argv)
    ep = b._Episodes()
    metareg_step, loop_step = b.metareg_step(ep), b.loop_step(ep)
    whole_step = b.metareg_step(ep, task_parallel=False) if args.whole else None

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    metareg_step(), loop_step()  # warm-up
    if whole_step is not None:
        whole_step()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; s per outer step")
    extra = " task_parallel=false | loop / it |" if whole_step is not None else ""
    print(f"| pair | metareg | per-task loop | loop / metareg |{extra}\n|---|---|---|---|" + "---|---|" * bool(extra))
    ratios, ms, ls, ws = [], [], [], []
    for i in range(args.pairs):
        m, lp = timed(metareg_step), timed(loop_step)
        ms.append(m), ls.append(lp), ratios.append(lp / m)
        row = f"| {i + 1} | {m:.3f} | {lp:.3f} | {lp / m:.2f}x |"
        if whole_step is not None:
            w = timed(whole_step)
            ws.append(w)
            row += f" {w:.3f} | {lp / w:.2f}x |"
        print(row, flush=True)
    if ws:
        print(f"task_parallel=false: median {statistics.median(ws):.3f} s, loop / it {statistics.median(ls) / statistics.median(ws):.2f}x "
              f"(ratio of medians); task_parallel on / off {statistics.median(ws) / statistics.median(ms):.2f}x")
    print(f"median: metareg {statistics.median(ms):.3f} s, loop {statistics.median(ls):.3f} s, "
          f"ratio of medians {statistics.median(ls) / statistics.median(ms):.2f}x, "
          f"median of pair ratios {statistics.median(ratios):.2f}x (min {min(ratios):.2f}x, max {max(ratios):.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
