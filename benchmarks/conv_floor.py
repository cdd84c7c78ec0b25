"""How much a Winograd convolution could save in the Conv4 MAML step (issue 13, item 3): a bound.

For the 64-channel 3x3 convolutions of the step's query pass (one 2-task chunk of Conv4 5-way
1-shot 15-query: [75, 128, H, H] channels-last, 2 groups), this times ``F.conv2d`` forward and
backward (oneDNN's direct convolution) against the batched matrix products alone that Winograd
F(2x2, 3x3) and F(4x4, 3x3) would run instead (``torch.bmm`` of the transformed tiles: 16 or 36
products of [tiles, 64] x [64, 64] per group; the backward as two such sets, for the input and
the weight gradients).  The tile transforms, which a Winograd kernel adds, are left out, so the
savings printed are upper bounds; no Winograd kernel is written.

    python benchmarks/conv_floor.py [--reps 20] [--chunks 16]

``--chunks``: how many 2-task chunks one outer step of meta-batch 32 runs (16), to turn the
per-call savings into seconds per outer step.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def median_ms(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--examples", type=int, default=75, help="query examples per task")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    groups, c, n = 2, 64, args.examples
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; per call: [{n}, {groups * c}, H, H] "
          f"channels-last, {groups} groups of {c} -> {c}; ms are medians of {args.reps}")
    print("| H | direct fwd ms | direct fwd+bwd ms | F(2,3) products fwd / fwd+bwd ms | "
          "F(4,3) products fwd / fwd+bwd ms | best saving per outer step (s) |")
    print("|---|---|---|---|---|---|")
    total_direct = total_saving = 0.0
    for h in (14, 7, 3):
        x = torch.randn(n, groups * c, h, h).to(memory_format=torch.channels_last).requires_grad_()
        w = torch.randn(groups * c, c, 3, 3, requires_grad=True)
        gy = torch.randn_like(F.conv2d(x, w, padding=1, groups=groups))
        fwd = median_ms(lambda: F.conv2d(x, w, padding=1, groups=groups), args.reps)
        both = median_ms(lambda: torch.autograd.grad(F.conv2d(x, w, padding=1, groups=groups), [x, w], gy), args.reps)
        wino = []
        for m, r in ((2, 4), (4, 6)):  # output tile m x m from an input tile r x r
            tiles = n * (-(-h // m)) ** 2
            a = torch.randn(groups * r * r, tiles, c)
            b = torch.randn(groups * r * r, c, c)
            f = median_ms(lambda: torch.bmm(a, b), args.reps)
            wino.append((f, 3 * f))  # backward: the input gradient and the weight gradient, same sizes
        best = min(wino, key=lambda fb: fb[1])
        saving = args.chunks * max(0.0, both - best[1]) / 1e3
        total_direct += args.chunks * both / 1e3
        total_saving += saving
        print(f"| {h} | {fwd:.2f} | {both:.2f} | {wino[0][0]:.2f} / {wino[0][1]:.2f} | "
              f"{wino[1][0]:.2f} / {wino[1][1]:.2f} | {saving:.3f} |")
    print(f"direct 64-channel convolutions of the query pass: {total_direct:.2f} s per outer step; "
          f"Winograd's products alone would save at most {total_saving:.2f} s of it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
