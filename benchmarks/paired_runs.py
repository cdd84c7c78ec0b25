"""Paired per-episode differences between saved runs scored on the same held-out episodes.

Runs with the same seed draw the same test episodes (metareg.evaluate.evaluation_generator), so
the difference of two models' per-episode scores has a much smaller CI than either score:

    OMP_NUM_THREADS=1 python benchmarks/paired_runs.py runs/hybrid:0 runs/protonet:0 \\
        runs/hybrid-maml:5 runs/maml:5

Arguments come in pairs A B, each RUN_DIR:K (K: adaptation steps; ignored by learners without
step adaptation); prints A, B and A - B, mean ± 95% CI.  Used for the glyphs_mtl hybrid table in
benchmarks/RESULTS.md (issue 10, item 5).
"""

from __future__ import annotations

import argparse
import math

import torch

import metareg
from metareg.evaluate import evaluation_generator
from metareg.runner import load_run

_cache: dict[tuple[str, int], torch.Tensor] = {}
_seed: dict[str, int] = {}


@torch.no_grad()
def scores(run_dir: str, k: int, n_tasks: int) -> torch.Tensor:
    """Per-episode metric of the run's test episodes after k steps [N], the runner's protocol."""
    if (run_dir, k) not in _cache:
        run = load_run(run_dir)
        cfg, bench, learner = run.config, run.bench, run.learner
        _seed[run_dir] = cfg.seed
        learner.eval()
        steps = [k] if learner.step_adaptation else [0]
        g = evaluation_generator(cfg.seed, "test")
        vals, done, n = [], 0, min(n_tasks, cfg.eval_tasks) if n_tasks else cfg.eval_tasks
        while done < n:
            m = min(cfg.eval_chunk, n - done)
            batch = bench.eval_batch(g, m, "test").to(run.device, run.dtype)
            pred = learner.adapt_predict(batch, steps)[steps[0]]
            vals.append(metareg.task_metric(pred, batch.query_y, bench.info.metric).double())
            done += m
        _cache[(run_dir, k)] = torch.cat(vals)
    return _cache[(run_dir, k)]


def ci95(x: torch.Tensor) -> float:
    return 1.96 * x.std(unbiased=True).item() / math.sqrt(len(x)) if len(x) > 1 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="pairs A B of RUN_DIR:K")
    ap.add_argument("--tasks", type=int, default=0, help="first N test episodes only (0: the run's eval_tasks)")
    args = ap.parse_args()
    if len(args.runs) % 2:
        ap.error("runs come in pairs A B")
    for a, b in zip(args.runs[::2], args.runs[1::2]):
        (da, ka), (db, kb) = a.rsplit(":", 1), b.rsplit(":", 1)
        sa, sb = scores(da, int(ka), args.tasks), scores(db, int(kb), args.tasks)
        if len(sa) != len(sb) or _seed[da] != _seed[db]:
            raise SystemExit(f"{a} and {b} were not scored on the same episodes (seed or eval_tasks differ)")
        d = sa - sb
        print(f"{a}: {sa.mean():.4f} ± {ci95(sa):.4f} | {b}: {sb.mean():.4f} ± {ci95(sb):.4f} | "
              f"difference {d.mean():+.4f} ± {ci95(d):.4f} (n={len(d)})", flush=True)


if __name__ == "__main__":
    main()
