"""``recompute=true``: second-order inner steps recomputed in the backward pass, in float64.

The meta-gradient must be the stored path's and a per-task loop's (hand-written MLP, one task at a
time, ``autograd.grad(create_graph=True)``), on the explicit-VJP path (MLP) and the autograd path
(Conv4, and the MLP with the VJPs switched off), for MAML, ANIL, Meta-SGD (theta and the learned
rates) and with a gradient combiner (per-task rows); and what the forward keeps for the backward
must not grow with the inner steps beyond one [T, P] fast-weight buffer per step.
"""

import pytest
import torch
import torch.nn.functional as F

from metareg.learners import LearnerContext, meta
from metareg.nets.conv import conv4
from metareg.plugins import get_registry
from metareg.runner import Run
from metareg.tasks import TaskBatch, TaskInfo
from reference_mlp import mlp

D = torch.float64


def _build(algo, **over):
    run = Run(algo, "sinusoid", {"dtype": "float64", "seed": 3, **over})
    run.build()
    # recompute is about the autograd graph: compare it with the stored graph, not the closed form
    run.learner.explicit_meta_gradient = False
    return run.learner, run.bench.train_batch(torch.Generator().manual_seed(0)).to("cpu", D)


def _loop_losses(theta, batch, lr, steps, head_only=False):
    """Per-task query losses [T] after ``steps`` second-order inner steps, one task at a time."""
    out = []
    for i in range(batch.num_tasks):
        fast = theta if theta.dim() == 1 else theta[i]
        for _ in range(steps):
            (g,) = torch.autograd.grad(F.mse_loss(mlp(fast, batch.support_x[i]), batch.support_y[i]),
                                       fast, create_graph=True)
            if head_only:
                g = torch.cat([torch.zeros_like(g[:-41]), g[-41:]])
            fast = fast - lr * g
        out.append(F.mse_loss(mlp(fast, batch.query_x[i]), batch.query_y[i]))
    return torch.stack(out)


class _Spy:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = meta._RecomputedStep.backward

        def backward(ctx, g):
            self.calls += 1
            return real(ctx, g)

        monkeypatch.setattr(meta._RecomputedStep, "backward", staticmethod(backward))


@pytest.mark.parametrize("vjp", [True, False], ids=["vjp", "autograd"])
@pytest.mark.parametrize("algo,steps", [("maml", 1), ("maml", 3), ("anil", 2)])
def test_recompute_equals_per_task_loop(algo, steps, vjp, monkeypatch):
    spy = _Spy(monkeypatch)
    learner, batch = _build(algo, inner_steps=steps, inner_lr=0.05, recompute=True)
    learner.__dict__["_vjp"] = vjp and learner._vjp  # cached_property: False forces autograd.grad
    learner.zero_grad()
    learner.step(batch)
    assert spy.calls == steps  # the recomputed path ran, once per step
    theta = learner.theta.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(_loop_losses(theta, batch, 0.05, steps, head_only=algo == "anil").mean(), theta)
    torch.testing.assert_close(learner.theta.grad, want, rtol=1e-10, atol=1e-12)


def test_recompute_meta_sgd_gradients_for_theta_and_alpha():
    grads = []
    for rc in (False, True):
        learner, batch = _build("meta_sgd", inner_steps=2, recompute=rc)
        with torch.no_grad():
            learner.alpha.uniform_(0.01, 0.05, generator=torch.Generator().manual_seed(1))
        learner.step(batch)
        grads.append((learner.theta.grad, learner.alpha.grad))
    assert grads[0][1].abs().max() > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_recompute_with_a_gradient_combiner_gives_the_per_task_rows():
    seen = {}
    learner, batch = _build("maml", inner_steps=2, inner_lr=0.05, recompute=True, combiner="pcgrad")
    real = learner.meta_objective.combiner.aggregate

    def record(jac, losses=None, task_ids=None):
        seen["jac"] = jac.detach().clone()
        return real(jac, losses, task_ids)

    learner.meta_objective.combiner.aggregate = record
    learner.step(batch)
    rows = learner.theta.detach().expand(batch.num_tasks, -1).clone().requires_grad_()
    (want,) = torch.autograd.grad(_loop_losses(rows, batch, 0.05, 2).sum(), rows)
    torch.testing.assert_close(seen["jac"], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [3, 2], ids=["one_chunk", "backbone_chunks"])
def test_recompute_on_conv4_equals_the_stored_path(monkeypatch, chunk):
    # the stored path is checked against an independent per-task Conv4 reference in
    # tests/nets/test_conv_backbones.py; batch norm and the autograd inner gradient here.
    # backbone_chunks: the backbone splits the 3 tasks into chunks of 2 and 1 on CPU, and the
    # recompute step then runs chunk by chunk (each chunk's inner steps and query pass)
    spy = _Spy(monkeypatch)
    chunked = []
    real_chunked = meta.GradientMetaLearner._chunked_step

    def spy_chunked(self, batch, n):
        chunked.append(n)
        return real_chunked(self, batch, n)

    monkeypatch.setattr(meta.GradientMetaLearner, "_chunked_step", spy_chunked)
    shape, ways, steps = (1, 16, 16), 3, 3
    g = torch.Generator().manual_seed(7)
    t, s, q = 3, 3, 6
    batch = TaskBatch(torch.randn(t, s, *shape, generator=g, dtype=D), torch.randint(0, ways, (t, s), generator=g),
                      torch.randn(t, q, *shape, generator=g, dtype=D), torch.randint(0, ways, (t, q), generator=g))
    spec = get_registry().get("algorithm", "maml")
    info = TaskInfo(input_shape=shape, output_dim=ways, loss="cross_entropy", metric="accuracy")
    grads = []
    for rc in (False, True):
        net = conv4(shape, ways, width=4)
        # the largest activation of one task: [q, 4, 16, 16] float64
        net.cpu_chunk_bytes = chunk * q * 4 * 16 * 16 * 8
        ctx = LearnerContext(task=info, make_backbone=lambda name=None: net,
                             generator=torch.Generator().manual_seed(2), dtype=D)
        # one chunk at a time (task_parallel, tested in tests/test_task_parallel.py, would run the
        # stored path by chunks too, and the spy's counter from two threads)
        learner = spec.factory(spec.config(inner_lr=0.3, inner_steps=steps, recompute=rc, task_parallel=False), ctx)
        learner.step(batch)
        grads.append(learner.theta.grad)
    chunks = -(-t // chunk)
    assert spy.calls == steps * chunks and grads[0].abs().max() > 1e-6
    assert chunked == ([chunk] if chunk < t else [])  # only the recompute step follows the backbone's chunks
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-14)


def _saved_bytes(learner, batch):
    """Bytes of the tensors the meta-objective's forward (inner loop, query loss) keeps for the
    backward, counted once per storage."""
    seen = {}

    def pack(x):
        seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fast, _ = learner.inner_loop(learner.theta, batch.support_x, batch.support_y, learner.config.inner_steps,
                                     create_graph=True)
        learner.losses(learner.predict_query(fast, batch.support_x, batch.query_x), batch.query_y).mean()
    return sum(seen.values())


def test_recompute_keeps_one_fast_weight_buffer_per_step():
    sizes = {}
    for rc in (False, True):
        for steps in (1, 6):
            learner, batch = _build("maml", inner_steps=steps, recompute=rc)
            sizes[rc, steps] = _saved_bytes(learner, batch)
    fast = batch.num_tasks * learner.theta.numel() * 8  # one [T, P] float64 buffer
    assert sizes[True, 6] - sizes[True, 1] == 5 * fast  # the 5 extra steps' fast weights, nothing else
    assert sizes[False, 6] - sizes[False, 1] > 1.5 * 5 * fast  # the stored path keeps each step's graph too


def test_recompute_does_not_change_evaluation_or_first_order():
    out = []
    for rc in (False, True):
        learner, batch = _build("fomaml", inner_steps=2, recompute=rc)
        learner.step(batch)
        preds = learner.adapt_predict(batch, [0, 2])
        out.append((learner.theta.grad, preds[2]))
    for a, b in zip(*out):
        assert torch.equal(a, b)


@pytest.mark.parametrize("recompute", [False, True])
def test_task_chunks_equal_the_per_task_loop(recompute):
    learner, batch = _build("maml", inner_steps=2, inner_lr=0.05, recompute=recompute, task_chunk=7)
    assert batch.num_tasks % 7  # uneven chunks: 7, 7, 7, 4
    out = learner.step(batch)
    theta = learner.theta.detach().clone().requires_grad_()
    losses = _loop_losses(theta, batch, 0.05, 2)
    (want,) = torch.autograd.grad(losses.mean(), theta)
    torch.testing.assert_close(learner.theta.grad, want, rtol=1e-10, atol=1e-12)
    assert out["loss"] == pytest.approx(losses.mean().item(), rel=1e-12)


def test_task_chunks_are_refused_where_the_whole_meta_batch_is_needed():
    from metareg.errors import IncompatibleError

    with pytest.raises(IncompatibleError, match="task_chunk"):
        _build("maml", task_chunk=4, combiner="pcgrad")
