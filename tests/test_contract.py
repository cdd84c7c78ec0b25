"""Contract tests generated from the registry: every registered learner, on every benchmark it
declares itself compatible with, must train, fill gradients, evaluate, leave its parameters alone
while adapting, and give the same numbers for the same seed.  A new plugin is checked for free."""

import dataclasses
import math

import pytest
import torch

from metareg import plugins
from metareg.errors import DataError
from metareg.runner import Run

# keep every case tiny: these fields are shrunk wherever a benchmark has them
SMALL = {"meta_batch": 2, "query": 3, "eval_query": 5, "num_tasks": 3, "max_per_group": 3}


def _cases():
    plugins.reset()
    reg = plugins.get_registry()
    cases = []
    for a in reg.list("algorithm"):
        if a.role != "learner":
            continue
        for b in reg.list("benchmark"):
            if a.requires <= b.provides:
                cases.append(pytest.param(a.name, b.name, id=f"{a.name}-{b.name}"))
    plugins.reset()
    return cases


def _build_or_skip(run):
    try:
        run.build()
    except DataError as e:  # benchmarks that read a user's dataset folder (omniglot, miniimagenet)
        pytest.skip(f"needs a dataset folder: {e}")


def _overrides(bench):
    spec = plugins.get_registry().get("benchmark", bench)
    names = {f.name for f in dataclasses.fields(spec.config)}
    small = {f"benchmark.{k}": v for k, v in SMALL.items() if k in names}
    if "num_tasks" in names and "meta_batch" in names:
        small["benchmark.meta_batch"] = 2
    return {**small, "steps": 2, "eval_tasks": 4, "val_every": 0, "eval_steps": [0, 1, 2], "eval_chunk": 2}


CASES = _cases()


def test_every_builtin_learner_has_a_case():
    names = {c.values[0] for c in CASES}
    assert {"maml", "fomaml", "reptile", "meta_sgd", "anil", "hard_sharing"} <= names


@pytest.mark.parametrize("algo,bench", CASES)
def test_learner_contract(algo, bench):
    run = Run(algo, bench, _overrides(bench))
    _build_or_skip(run)
    learner = run.learner
    assert learner.kind in ("meta", "multitask")
    assert learner.kind == run.algo_spec.kind
    batch = run.bench.train_batch(torch.Generator().manual_seed(0))
    metrics = learner.step(batch)
    assert math.isfinite(metrics["loss"])
    for name, p in learner.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{algo}: step() left {name}.grad empty"
            assert torch.isfinite(p.grad).all(), f"{algo}: non-finite gradient in {name}"

    ev = run.bench.eval_batch(torch.Generator().manual_seed(1), 3)
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    preds = learner.adapt_predict(ev, [0, 1, 2])
    assert set(preds) == {0, 1, 2}
    for n, p in learner.named_parameters():
        assert torch.equal(before[n], p.detach()), f"{algo}: adapt_predict changed {n}"
    for k, pred in preds.items():
        assert pred.shape[:2] == ev.query_x.shape[:2] and torch.isfinite(pred).all()


@pytest.mark.parametrize("algo,bench", CASES)
def test_same_seed_same_numbers(algo, bench):
    _build_or_skip(Run(algo, bench, _overrides(bench)))
    a = Run(algo, bench, _overrides(bench)).execute(progress=False)
    b = Run(algo, bench, _overrides(bench)).execute(progress=False)
    keys = [k for k in a if k.startswith(("mse", "accuracy")) or k == "final_loss"]
    assert keys
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
