"""Multi-task combiners beside their plain baselines, measured in the same run.

Convention (read by `metareg bench`): ``benchmark.group`` names the case, ``extra_info["role"]``
is "metareg" or "baseline", ``extra_info["label"]`` names the variant.  Run with
``pytest benchmarks/bench_combiners.py --benchmark-only``.

(a) ``combiner[<name>]``: each gradient combiner on a T=8, P=1,000,000 float32 Jacobian with
    conflicting rows, beside ``J.mean(0)`` (target: at most 3x).  Loss-weighting combiners
    (equal, uncertainty, dwa) never see a Jacobian and are not in this case.
(b) ``mtl_step[<name>]``: one training step of the hard-sharing model of shared/BENCHMARKS.md
    (encoder 64-256-256, 3 linear heads, batch 256, SGD) with PCGrad or UPGrad, beside the plain
    summed-loss step (target: at most 1.5x; LibMTL and torchjd: ~2.5x).  ``mtl_step[jacobian]``
    splits out where the time goes: the task Jacobian alone, by one batched backward
    (``metareg.task_jacobian``) and by T separate backward passes.
"""

from __future__ import annotations

import pytest
import torch

import metareg
from metareg import plugins
from metareg.nets import mlp

T, P = 8, 1_000_000


def _make(name, num_tasks):
    spec = plugins.get_registry().get("algorithm", name)
    return spec.factory(spec.config(), num_tasks=num_tasks)


def _gradient_combiners():
    return [s.name for s in plugins.get_registry().list("algorithm", role="combiner") if s.factory.needs_jacobian]


def _tag(benchmark, group, role, label):
    benchmark.group = group
    benchmark.extra_info["role"] = role
    benchmark.extra_info["label"] = label


@pytest.fixture(scope="module")
def jacobian():
    g = torch.Generator().manual_seed(0)
    j = torch.randn(T, P, generator=g)
    # half the tasks pull against a shared direction, so every method has conflicts to resolve
    common = torch.randn(P, generator=g)
    j[: T // 2] += 0.5 * common
    j[T // 2:] -= 0.5 * common
    return j


@pytest.mark.parametrize("name", _gradient_combiners())
@pytest.mark.parametrize("role", ["baseline", "metareg"])
def test_combiner_vs_mean(benchmark, jacobian, name, role):
    losses = torch.rand(T) + 0.5
    if role == "baseline":
        _tag(benchmark, f"combiner[{name}]", "baseline", "J.mean(0)")
        benchmark.pedantic(lambda: jacobian.mean(0), rounds=30, warmup_rounds=3)
    else:
        c = _make(name, T)
        _tag(benchmark, f"combiner[{name}]", "metareg", name)
        benchmark.pedantic(lambda: c.aggregate(jacobian, losses), rounds=30, warmup_rounds=3)


@pytest.mark.parametrize("name", [n for n in _gradient_combiners() if getattr(_make(n, T), "cosine_gram", False)])
def test_combiner_without_cosine_op(benchmark, jacobian, name):
    """The same combiner with G formed by metareg.ops.gram instead of metareg.ops.pairwise_cosine_norms
    times the row norms: how much of its time is the cosine op."""
    c = _make(name, T)
    c.cosine_gram = False
    _tag(benchmark, f"combiner[{name}]", "metareg", f"{name}, Gram by ops.gram")
    benchmark.pedantic(lambda: c.aggregate(jacobian, torch.rand(T) + 0.5), rounds=30, warmup_rounds=3)


class HardSharing:
    """Encoder 64-256-256 (ReLU), 3 linear heads, one batch of 256 shared by the tasks."""

    def __init__(self, tasks=3, batch=256, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.net = mlp((64,), 1, hidden=(256, 256))
        split = self.net.head_offset
        self.shared = self.net.init_flat(g)[:split].clone().requires_grad_()
        self.heads = torch.stack([self.net.init_flat(g)[split:] for _ in range(tasks)]).requires_grad_()
        self.x = torch.randn(batch, 64, generator=g)
        self.y = torch.randn(tasks, batch, 1, generator=g)
        self.opt = torch.optim.SGD([self.shared, self.heads], lr=1e-3)

    def losses(self):
        hf = self.net.head_from
        feats = self.net.forward(self.shared, self.x, 0, hf)
        pred = self.net.forward(self.heads, feats.expand(self.heads.shape[0], -1, -1), hf)
        return ((pred - self.y) ** 2).mean((1, 2))

    def plain_step(self):
        self.opt.zero_grad(set_to_none=True)
        self.losses().sum().backward()
        self.opt.step()

    def combiner_step(self, combiner):
        # what SharedEncoderLearner.step does for a gradient combiner
        self.opt.zero_grad(set_to_none=True)
        losses = self.losses()
        jac = metareg.task_jacobian(losses, self.shared)
        self.shared.grad = combiner.aggregate(jac, losses.detach())
        losses.sum().backward(inputs=[self.heads])
        self.opt.step()


@pytest.mark.parametrize("name", ["pcgrad", "upgrad"])
@pytest.mark.parametrize("role", ["baseline", "metareg"])
def test_mtl_step(benchmark, name, role):
    model = HardSharing()
    if role == "baseline":
        _tag(benchmark, f"mtl_step[{name}]", "baseline", "summed loss")
        benchmark.pedantic(model.plain_step, rounds=50, warmup_rounds=5)
    else:
        c = _make(name, 3)
        _tag(benchmark, f"mtl_step[{name}]", "metareg", name)
        benchmark.pedantic(lambda: model.combiner_step(c), rounds=50, warmup_rounds=5)


def _loop_jacobian(losses, params):
    return torch.stack([torch.autograd.grad(losses[i], params, retain_graph=True)[0] for i in range(len(losses))])


@pytest.mark.parametrize("variant", ["summed loss", "task_jacobian (batched)", "T backward passes"])
def test_mtl_step_jacobian_cost(benchmark, variant):
    """Forward + the backward each step needs, without the combiner: where the step time goes."""
    model = HardSharing()
    role = "baseline" if variant == "summed loss" else "metareg"
    _tag(benchmark, "mtl_step[jacobian]", role, variant)
    if variant == "summed loss":
        fn = lambda: torch.autograd.grad(model.losses().sum(), model.shared)  # noqa: E731
    elif variant == "task_jacobian (batched)":
        fn = lambda: metareg.task_jacobian(model.losses(), model.shared, retain_graph=False)  # noqa: E731
    else:
        fn = lambda: _loop_jacobian(model.losses(), model.shared)  # noqa: E731
    benchmark.pedantic(fn, rounds=50, warmup_rounds=5)
