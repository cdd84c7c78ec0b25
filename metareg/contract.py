"""The contract every registered plugin object must keep, as plain checks.

The project's tests (tests/test_contract.py) run them over everything registered, and
``metareg check-plugin DIST`` runs them over what one installed package registers, so a
third-party author gets the same checks the built-ins pass.  A check raises
:class:`ContractFailure` saying what broke; :class:`ContractSkip` when it cannot run here (a
benchmark that needs a dataset folder).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .errors import DataError
from .plugins import PluginManager, get_manager
from .registry import package_key

__all__ = ["ContractFailure", "ContractSkip", "SMALL", "small_overrides", "check_learner", "check_same_seed",
           "check_benchmark", "check_combiner", "check_backbone", "learner_cases", "package_checks"]

#: every case stays tiny: these fields are shrunk wherever a benchmark has them
SMALL = {"meta_batch": 2, "query": 3, "eval_query": 5, "num_tasks": 3, "max_per_group": 3}


class ContractFailure(AssertionError):
    """A plugin object broke the contract."""


class ContractSkip(Exception):
    """The check cannot run on this machine (e.g. the benchmark reads a dataset folder)."""


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise ContractFailure(message)


def _registry(manager: PluginManager | None):
    return (manager or get_manager()).registry


def small_overrides(bench: str, manager: PluginManager | None = None) -> dict[str, Any]:
    spec = _registry(manager).get("benchmark", bench)
    names = {f.name for f in dataclasses.fields(spec.config)}
    small = {f"benchmark.{k}": v for k, v in SMALL.items() if k in names}
    return {**small, "run.steps": 2, "run.eval_tasks": 4, "run.val_every": 0, "run.eval_steps": [0, 1, 2],
            "run.eval_chunk": 2}


def _built_run(algo: str, bench: str, manager: PluginManager | None, extra: dict[str, Any] | None = None):
    from .runner import Run

    run = Run(algo, bench, {**small_overrides(bench, manager), **(extra or {})}, manager=manager)
    try:
        run.build()
    except DataError as e:
        raise ContractSkip(f"needs a dataset folder: {e}") from None
    return run


def check_learner(algo: str, bench: str, manager: PluginManager | None = None, extra: dict[str, Any] | None = None) -> None:
    """Trains one step (filling finite ``.grad``s without stepping), adapts and predicts with the
    right shapes, and leaves its parameters alone while adapting."""
    run = _built_run(algo, bench, manager, extra)
    learner = run.learner
    _expect(learner.kind in ("meta", "multitask"), f"{algo}: kind must be 'meta' or 'multitask', got {learner.kind!r}")
    _expect(learner.kind == run.algo_spec.kind,
            f"{algo}: the learner's kind {learner.kind!r} differs from its registered kind {run.algo_spec.kind!r}")
    batch = run.bench.train_batch(torch.Generator().manual_seed(0)).to(run.device, run.dtype)
    before_step = {n: p.detach().clone() for n, p in learner.named_parameters()}
    metrics = learner.step(batch)
    _expect(isinstance(metrics, dict) and "loss" in metrics, f"{algo}: step() must return a dict with 'loss'")
    _expect(math.isfinite(float(metrics["loss"])), f"{algo}: step() returned a non-finite loss {metrics['loss']}")
    for name, p in learner.named_parameters():
        _expect(torch.equal(before_step[name], p.detach()),
                f"{algo}: step() changed {name}; it must only fill .grad (the runner owns the optimizer)")
        if p.requires_grad:
            _expect(p.grad is not None, f"{algo}: step() left {name}.grad empty")
            _expect(bool(torch.isfinite(p.grad).all()), f"{algo}: non-finite gradient in {name}")
    ev = run.bench.eval_batch(torch.Generator().manual_seed(1), 3).to(run.device, run.dtype)
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    preds = learner.adapt_predict(ev, [0, 1, 2])
    expected = {0} if not getattr(learner, "step_adaptation", True) else {0, 1, 2}
    _expect(set(preds) >= expected, f"{algo}: adapt_predict(batch, [0, 1, 2]) returned steps {sorted(preds)}")
    for n, p in learner.named_parameters():
        _expect(torch.equal(before[n], p.detach()), f"{algo}: adapt_predict changed {n}")
    for k, pred in preds.items():
        _expect(tuple(pred.shape[:2]) == tuple(ev.query_x.shape[:2]),
                f"{algo}: predictions after {k} steps are {list(pred.shape)}, want [T, Q, ...] = {list(ev.query_x.shape[:2])}")
        _expect(bool(torch.isfinite(pred).all()), f"{algo}: non-finite predictions after {k} steps")


def check_same_seed(algo: str, bench: str, manager: PluginManager | None = None, extra: dict[str, Any] | None = None) -> None:
    """Two runs with the same seed give the same numbers (randomness only from the runner's seeds)."""
    from .evaluate import is_metric_key
    from .runner import Run

    _built_run(algo, bench, manager, extra)
    over = {**small_overrides(bench, manager), **(extra or {})}
    a = Run(algo, bench, over, manager=manager).execute(progress=False)
    b = Run(algo, bench, over, manager=manager).execute(progress=False)
    keys = [k for k in a if is_metric_key(k, a.get("metric")) or k == "final_loss"]
    _expect(bool(keys), f"{algo} on {bench}: the summary holds no metric")
    diff = {k: (a[k], b[k]) for k in keys if a[k] != b.get(k) and not (_nan(a[k]) and _nan(b.get(k)))}
    _expect(not diff, f"{algo} on {bench}: the same seed gave different numbers: {diff}")


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def check_benchmark(bench: str, manager: PluginManager | None = None) -> None:
    """Batches have the declared shapes, the same generator state gives the same batch, and the
    evaluation batch honours ``num_tasks``."""
    spec = _registry(manager).get("benchmark", bench)
    names = {f.name for f in dataclasses.fields(spec.config)}
    cfg = spec.config(**{k: v for k, v in SMALL.items() if k in names})
    try:
        dist = spec.factory(cfg)
    except DataError as e:
        raise ContractSkip(f"needs a dataset folder: {e}") from None
    info = dist.info
    _expect(tuple(info.input_shape) == tuple(int(d) for d in info.input_shape) and info.output_dim >= 1,
            f"{bench}: info.input_shape must be ints and output_dim >= 1, got {info}")
    classification = info.loss == "cross_entropy"
    _expect(classification == ("classification" in spec.provides) or not classification,
            f"{bench}: a cross-entropy benchmark must provide 'classification'")
    for label, make in (("train_batch", lambda g: dist.train_batch(g)), ("eval_batch", lambda g: dist.eval_batch(g, 3))):
        b1, b2 = make(torch.Generator().manual_seed(5)), make(torch.Generator().manual_seed(5))
        for part in ("support_x", "query_x"):
            x = getattr(b1, part)
            _expect(tuple(x.shape[2:]) == tuple(info.input_shape),
                    f"{bench}.{label}: {part} is {list(x.shape)}, want [T, N, {', '.join(map(str, info.input_shape))}]")
        for part in ("support_y", "query_y"):
            y = getattr(b1, part)
            want = 2 if classification else 3
            _expect(y.dim() == want, f"{bench}.{label}: {part} has {y.dim()} dims, want {want} for loss {info.loss}")
        _expect(all(torch.equal(getattr(b1, f), getattr(b2, f)) for f in ("support_x", "support_y", "query_x", "query_y")),
                f"{bench}.{label}: the same generator seed gave different batches (draw randomness only from the generator)")
        if "fixed_tasks" in spec.provides and label == "train_batch":
            _expect(b1.task_ids is not None, f"{bench}: provides fixed_tasks but its train_batch has no task_ids")
    _expect(dist.eval_batch(torch.Generator().manual_seed(0), 3).num_tasks == 3, f"{bench}.eval_batch(g, 3) must hold 3 tasks")


def check_combiner(name: str, manager: PluginManager | None = None) -> None:
    """Turns a task Jacobian [T, P] into a finite update [P] and losses [T] into a finite scalar."""
    spec = _registry(manager).get("algorithm", name)
    _expect(spec.role == "combiner", f"{name} is not a combiner")
    comb = spec.factory(spec.config(), num_tasks=3)
    g = torch.Generator().manual_seed(0)
    jac = torch.randn(3, 50, generator=g)
    losses = torch.rand(3, generator=g) + 0.1
    ids = torch.arange(3)
    upd = comb.aggregate(jac, losses, ids)
    _expect(tuple(upd.shape) == (50,) and bool(torch.isfinite(upd).all()),
            f"{name}.aggregate([3, 50]) returned {list(upd.shape)} (want [50], finite)")
    loss = comb.loss(losses, ids)
    _expect(loss.dim() == 0 and bool(torch.isfinite(loss)), f"{name}.loss([3]) must be a finite scalar")


def check_backbone(name: str, manager: PluginManager | None = None) -> None:
    """Builds for a small input and maps [T, N, *input] to [T, N, output_dim] for batched parameters."""
    spec = _registry(manager).get("backbone", name)
    for shape in ((4,), (1, 28, 28)):
        try:
            net = spec.factory(shape, 5)
        except Exception:  # noqa: BLE001 - a backbone may accept only some input ranks
            continue
        _expect(hasattr(net, "init_flat"), f"backbone {name}: the factory must return a metareg.FunctionalNet")
        params = net.init_flat(torch.Generator().manual_seed(0)).unsqueeze(0).expand(2, -1)
        out = net(params, torch.randn(2, 3, *shape))
        _expect(tuple(out.shape) == (2, 3, 5), f"backbone {name}: output {list(out.shape)} for input [2, 3, {shape}], want [2, 3, 5]")
        return
    raise ContractFailure(f"backbone {name}: built for neither a vector (4,) nor an image (1, 28, 28) input")


def learner_cases(manager: PluginManager | None = None) -> list[tuple[str, str]]:
    """(learner, benchmark) for every learner and every benchmark it declares itself compatible with."""
    reg = _registry(manager)
    return [(reg.ref(a), reg.ref(b)) for a in reg.list("algorithm") if a.role == "learner"
            for b in reg.list("benchmark") if a.requires <= b.provides]


#: built-ins a third-party benchmark is tried with, one per family (the first compatible is used)
PARTNERS = ("maml", "protonet", "hard_sharing")
#: the benchmarks a third-party learner is tried on when its package brings none it can use
CHEAP_BENCHMARKS = ("sinusoid", "sinusoid_mtl", "glyphs")


def package_checks(package: str, manager: PluginManager | None = None) -> Iterator[tuple[str, Callable[[], None]]]:
    """(description, check) for everything ``package`` registers, each object against a small
    partner where it needs one (a learner on its own package's benchmarks, or a cheap built-in)."""
    reg = _registry(manager)
    key = package_key(package)
    mine = [s for c in ("algorithm", "benchmark", "backbone") for s in reg.list(c) if package_key(s.package) == key]
    for spec in mine:
        ref = reg.ref(spec)
        if spec.category == "benchmark":
            yield f"benchmark {ref}: batches", lambda r=ref: check_benchmark(r, manager)
            for partner in PARTNERS:
                p = reg.get("algorithm", partner)
                if p.requires <= spec.provides:
                    yield f"{partner} on {ref}", lambda p=partner, r=ref: check_learner(p, r, manager)
        elif spec.category == "backbone":
            yield f"backbone {ref}", lambda r=ref: check_backbone(r, manager)
        elif spec.role == "combiner":
            yield f"combiner {ref}", lambda r=ref: check_combiner(r, manager)
            yield f"hard_sharing with combiner {ref} on sinusoid_mtl", lambda r=ref: check_learner(
                "hard_sharing", "sinusoid_mtl", manager, {"algorithm.combiner": r})
        else:
            own = [reg.ref(b) for b in reg.list("benchmark") if package_key(b.package) == key and spec.requires <= b.provides]
            cheap = [b for b in CHEAP_BENCHMARKS if reg.get("benchmark", b).provides >= spec.requires][:1]
            for bench in own or cheap:
                yield f"{ref} on {bench}: one step, adaptation", lambda r=ref, b=bench: check_learner(r, b, manager)
                yield f"{ref} on {bench}: same seed, same numbers", lambda r=ref, b=bench: check_same_seed(r, b, manager)
            if not (own or cheap):
                yield f"{ref}: a compatible benchmark", lambda r=ref: (_ for _ in ()).throw(
                    ContractFailure(f"{r} requires {sorted(spec.requires)}, which no installed benchmark provides"))
