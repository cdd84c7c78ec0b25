"""Multi-task methods inside meta-learning: what a combiner or the task discriminator adds to a
meta-step (issue 10, item 4: "the extra cost over the plain meta-step is measured").

One case per (setting, variant): the variant's full training step (forward, backward, combiner,
Adam) with role "metareg", beside the plain meta-step of the same learner on the same pre-drawn
meta-batches with role "baseline".  The table's ratio is plain / variant: 0.5x means the variant
step takes twice as long.  Variants:

* ``rows, mean``: the per-task meta-gradients [T, P] from one backward of the meta-batch run from
  T copies of theta, then their mean: the cost of the Jacobian alone (same update as plain);
* a gradient combiner by name (pcgrad, mgda, cagrad, nash_mtl, upgrad; gradvac and gradnorm where
  the benchmark has task ids);
* ``adv``: the task discriminator behind gradient reversal (adversarial=0.1), plain mean;
* ``vmap jacobian, mean``: the other way to get [T, P]: ``metareg.task_jacobian`` (autograd's
  batched backward over T unit cotangents, ``is_grads_batched``) on the plain step's graph; on
  Conv4 vmap refuses the grouped layout and it falls back to T backward passes.

Settings: MAML (second order, one inner step) and ProtoNet on glyphs with Conv4, 5-way 1-shot,
15 queries, T = 8 (what `metareg run maml -b glyphs --set combiner=pcgrad` does); MAML and
ProtoNet on ``glyph_clusters`` with its MLP 784-128-128 (the setting of the conflict experiment,
benchmarks/meta_conflict.py), T = 8; MAML on ``relatedness`` (MLP 8-40-40-1, T = 10).
METAREG_BENCH_ROUNDS scales the rounds.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch

import metareg
from metareg.runner import Run

ROUNDS_SCALE = float(os.environ.get("METAREG_BENCH_ROUNDS", "1"))
POOL = 4

# setting -> (learner, benchmark, overrides, rounds, iterations per round)
SETTINGS = {
    "maml glyphs conv4 5w1s T=8": ("maml", "glyphs", {"meta_batch": 8, "inner_lr": 0.4}, 15, 1),
    "protonet glyphs conv4 5w1s T=8": ("protonet", "glyphs", {"meta_batch": 8}, 15, 1),
    "maml glyph_clusters mlp T=8": ("maml", "glyph_clusters", {"meta_batch": 8}, 50, 3),
    "protonet glyph_clusters mlp T=8": ("protonet", "glyph_clusters", {"meta_batch": 8}, 50, 3),
    "maml relatedness mlp T=10": ("maml", "relatedness", {"inner_lr": 0.05}, 50, 10),
}
STATELESS = ["rows, mean", "pcgrad", "mgda", "cagrad", "nash_mtl", "upgrad", "vmap jacobian, mean"]
WITH_IDS = ["rows, mean", "pcgrad", "gradvac", "mgda", "cagrad", "nash_mtl", "upgrad", "gradnorm", "adv"]
VARIANTS = {name: (WITH_IDS if bench != "glyphs" else STATELESS) for name, (_, bench, *_) in SETTINGS.items()}


class _RowMean(metareg.Combiner):
    """The mean of the per-task rows: the plain update, reached through the Jacobian."""

    needs_jacobian = True

    def aggregate(self, jacobian, losses=None, task_ids=None):
        return jacobian.mean(0)


def _rounds(n: int) -> int:
    return max(3, round(n * ROUNDS_SCALE))


def _build(setting: str, variant: str):
    algo, bench, over = SETTINGS[setting][:3]
    extra = {}
    if variant == "adv":
        extra = {"adversarial": 0.1}
    elif variant not in ("plain", "rows, mean", "vmap jacobian, mean"):
        extra = {"combiner": variant}
    elif variant == "rows, mean":
        extra = {"combiner": "pcgrad"}  # swapped for _RowMean below
    run = Run(algo, bench, {"seed": 0, **over, **extra})
    run.build()
    if variant == "rows, mean":
        mo = run.learner.meta_objective
        mo.combiner = _RowMean()
    g = torch.Generator().manual_seed(0)
    batches = [run.bench.train_batch(g) for _ in range(POOL)]
    return run, batches


def _vmap_step(learner, batch):
    """The plain step's graph, then [T, P] by metareg.task_jacobian (batched backward)."""
    theta = learner.theta
    if hasattr(learner, "inner_loop"):
        feats_s, feats_q = learner.features(theta, batch.support_x, batch.query_x)
        fast, _ = learner.inner_loop(learner._adapted(theta), feats_s, batch.support_y, learner.config.inner_steps,
                                     create_graph=not learner.config.first_order)
        losses = learner.losses(learner.predict_query(fast, feats_s, feats_q), batch.query_y)
    else:
        logits, _ = learner._episode(batch)
        losses = learner.episode_losses(logits, batch.query_y)
    # retain_graph: where vmap cannot batch the backward (Conv4's grouped layout: "NYI: querying
    # is_contiguous inside of vmap"), task_jacobian falls back to T backward passes over this graph
    jac = metareg.task_jacobian(losses, theta, retain_graph=True)
    theta.grad = jac.mean(0)


CASES = [(s, v) for s in SETTINGS for v in VARIANTS[s]]


@pytest.mark.parametrize("setting,variant", CASES, ids=[f"{s} | {v}" for s, v in CASES])
@pytest.mark.parametrize("role", ["baseline", "metareg"])
def test_meta_step(benchmark, setting, variant, role):
    run, batches = _build(setting, "plain" if role == "baseline" else variant)
    learner, opt = run.learner, run.optimizer
    it = itertools.cycle(batches)
    vmap = role == "metareg" and variant == "vmap jacobian, mean"

    def step():
        opt.zero_grad(set_to_none=True)
        if vmap:
            _vmap_step(learner, next(it))
        else:
            learner.step(next(it))
        opt.step()

    benchmark.group = f"meta_step[{setting} | {variant}]"
    benchmark.extra_info["role"] = role
    benchmark.extra_info["label"] = "plain meta-step" if role == "baseline" else variant
    rounds, iterations = SETTINGS[setting][3:]
    benchmark.pedantic(step, rounds=_rounds(rounds), iterations=iterations, warmup_rounds=1)
