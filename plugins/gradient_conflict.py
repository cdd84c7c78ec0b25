"""Run observer: plots the gradient conflicts a multi-task run logged.

Multi-task learners log the pairwise cosine of their task gradients (``grad_cosine``, [T, T], with
``grad_cosine_tasks`` naming the training task of each row) in the step metrics, which the runner
writes to ``metrics.jsonl``.  At the end of a run with an output folder this observer reads them
back and writes ``plots/gradient_conflict.png``: the mean cosine of every pair of training tasks
(a heatmap, negative = conflict, the signature of negative transfer; Yu et al. 2020 call a pair
conflicting when the cosine is negative) and the mean pairwise cosine over the training steps.
Runs that logged no conflicts get no plot.  Reading the file rather than the learner keeps the
plot reproducible from any run folder (:func:`plot_gradient_conflict`).
"""

import json
import math
import os
from pathlib import Path

import metareg

PLOT = Path("plots") / "gradient_conflict.png"


def read_conflicts(run_dir):
    """(steps, mean pairwise cosine per step, [M][M] mean cosine matrix or None, M) from metrics.jsonl."""
    steps, means, total, count = [], [], {}, {}
    size = 0
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return steps, means, None, 0
    with path.open() as fh:
        for line in fh:
            rec = json.loads(line)
            cos = rec.get("grad_cosine")
            if cos is None:
                continue
            ids = rec.get("grad_cosine_tasks") or list(range(len(cos)))
            size = max(size, max(ids) + 1)
            for a, ia in enumerate(ids):
                for b, ib in enumerate(ids):
                    total[ia, ib] = total.get((ia, ib), 0.0) + cos[a][b]
                    count[ia, ib] = count.get((ia, ib), 0) + 1
            if "grad_cosine_mean" in rec:
                steps.append(rec["step"])
                means.append(rec["grad_cosine_mean"])
    if not total:
        return steps, means, None, 0
    matrix = [[total[i, j] / count[i, j] if (i, j) in count else math.nan for j in range(size)] for i in range(size)]
    return steps, means, matrix, size


def plot_gradient_conflict(run_dir):
    """Write ``plots/gradient_conflict.png`` into ``run_dir``; returns its path, or None when the
    run logged no gradient cosines."""
    steps, means, matrix, m = read_conflicts(run_dir)
    if matrix is None:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    im = ax1.imshow(np.array(matrix), cmap="RdBu", vmin=-1, vmax=1)
    ax1.set_title("mean cosine of task gradients")
    ax1.set_xlabel("task")
    ax1.set_ylabel("task")
    if m <= 20:
        ax1.set_xticks(range(m))
        ax1.set_yticks(range(m))
    fig.colorbar(im, ax=ax1, fraction=0.046)
    ax2.plot(steps, means, lw=1)
    ax2.axhline(0, color="k", lw=0.5)
    ax2.set_xlabel("step")
    ax2.set_ylabel("mean pairwise cosine")
    ax2.set_title("gradient agreement over training")
    fig.tight_layout()
    out = Path(run_dir) / PLOT
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)  # never a half-written plot in the run folder
    return out


@metareg.hookimpl
def on_run_end(run, summary):
    if run.out is not None and summary.get("status") in ("completed", "interrupted"):
        plot_gradient_conflict(run.out)
