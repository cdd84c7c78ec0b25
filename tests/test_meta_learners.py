"""Batched meta-learners against an independent per-task Python loop, in float64.

torch.func.vmap is known to get second-order meta-gradients wrong through batch norm, so every
batched path here is checked against the plainest possible oracle: one task at a time, nn.Linear
parameters sliced by hand from the flat vector, torch.autograd.grad with create_graph.
"""

import pytest
import torch
import torch.nn.functional as F

from metareg.runner import Run
from reference_mlp import mlp


def _build(algo, overrides=None, bench="sinusoid", path="explicit"):
    run = Run(algo, bench, {"dtype": "float64", "seed": 3, **(overrides or {})})
    run.build()
    if path == "autograd":  # the unrolled graph through the autograd engine
        run.learner.explicit_meta_gradient = False
    return run


def _batch(run, seed=0):
    return run.bench.train_batch(torch.Generator().manual_seed(seed)).to("cpu", torch.float64)


def _loop_maml(theta, batch, lr, steps, first_order, head_only=False, lr_vec=None):
    """Meta-gradient of the mean query loss, one task at a time."""
    total = 0.0
    t = batch.num_tasks
    n_head = 41
    for i in range(t):
        fast = theta
        for _ in range(steps):
            loss = F.mse_loss(mlp(fast, batch.support_x[i]), batch.support_y[i])
            if head_only:
                (g,) = torch.autograd.grad(loss, fast, create_graph=not first_order)
                g = torch.cat([torch.zeros_like(g[:-n_head]), g[-n_head:]])
            else:
                (g,) = torch.autograd.grad(loss, fast, create_graph=not first_order)
            if first_order:
                g = g.detach()
            fast = fast - (lr_vec if lr_vec is not None else lr) * g
        total = total + F.mse_loss(mlp(fast, batch.query_x[i]), batch.query_y[i])
    return total / t


@pytest.mark.parametrize("path", ["explicit", "autograd"])
@pytest.mark.parametrize("algo,steps", [("maml", 1), ("maml", 3), ("fomaml", 1), ("fomaml", 2), ("anil", 2)])
def test_meta_gradient_equals_per_task_loop(algo, steps, path):
    run = _build(algo, {"inner_steps": steps, "inner_lr": 0.05}, path=path)
    learner, batch = run.learner, _batch(run)
    # the closed-form path is taken wherever it applies (ANIL adapts only the head: never)
    assert learner._explicit == (path == "explicit" and algo != "anil")
    learner.zero_grad()
    learner.step(batch)
    got = learner.theta.grad.clone()
    theta = learner.theta.detach().clone().requires_grad_()
    loss = _loop_maml(theta, batch, 0.05, steps, first_order=(algo == "fomaml"), head_only=(algo == "anil"))
    (want,) = torch.autograd.grad(loss, theta)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_second_order_differs_from_first_order():
    # guards against a "second-order" path that silently drops the Hessian term
    a, b = _build("maml"), _build("fomaml")
    batch = _batch(a)
    for r in (a, b):
        r.learner.step(batch)
    assert not torch.allclose(a.learner.theta.grad, b.learner.theta.grad)


@pytest.mark.parametrize("path", ["explicit", "autograd"])
def test_meta_sgd_gradients_for_theta_and_alpha(path):
    run = _build("meta_sgd", {"inner_lr": 0.03, "inner_steps": 2}, path=path)
    learner, batch = run.learner, _batch(run)
    assert learner._explicit == (path == "explicit")
    with torch.no_grad():
        learner.alpha.uniform_(0.01, 0.05, generator=torch.Generator().manual_seed(1))
    learner.step(batch)
    theta = learner.theta.detach().clone().requires_grad_()
    alpha = learner.alpha.detach().clone().requires_grad_()
    loss = _loop_maml(theta, batch, None, 2, first_order=False, lr_vec=alpha)
    gt, ga = torch.autograd.grad(loss, (theta, alpha))
    torch.testing.assert_close(learner.theta.grad, gt, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(learner.alpha.grad, ga, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("algo,steps", [("maml", 2), ("fomaml", 2), ("meta_sgd", 1)])
def test_closed_form_meta_gradient_on_classification_equals_autograd(algo, steps):
    """Cross-entropy (softmax Hessian) and a Flatten layer: 8x8 digits through the MLP backbone."""
    cfg = {"inner_steps": steps, "backbone": "mlp", "meta_batch": 3, "inner_lr": 0.3}
    a, b = _build(algo, cfg, bench="digits"), _build(algo, cfg, bench="digits", path="autograd")
    assert a.learner._explicit and not b.learner._explicit
    batch = _batch(a)
    out = [r.learner.step(batch) for r in (a, b)]
    assert out[0]["loss"] == pytest.approx(out[1]["loss"], rel=1e-12)
    for pa, pb in zip(a.learner.parameters(), b.learner.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-10, atol=1e-13)


def test_closed_form_path_is_not_taken_where_it_would_change_the_objective():
    assert not _build("maml", {"combiner": "pcgrad"}).learner._explicit
    assert not _build("maml", bench="glyphs", overrides={"meta_batch": 2}).learner._explicit  # conv4: no R-operators


def test_reptile_update_equals_loop():
    run = _build("reptile", {"inner_steps": 3, "inner_lr": 0.02})
    learner, batch = run.learner, _batch(run)
    learner.step(batch)
    theta = learner.theta.detach()
    finals = []
    for i in range(batch.num_tasks):
        x = torch.cat([batch.support_x[i], batch.query_x[i]])
        y = torch.cat([batch.support_y[i], batch.query_y[i]])
        w = theta.clone()
        for _ in range(3):
            w.requires_grad_()
            (g,) = torch.autograd.grad(F.mse_loss(mlp(w, x), y), w)
            w = (w - 0.02 * g).detach()
        finals.append(w)
    torch.testing.assert_close(learner.theta.grad, theta - torch.stack(finals).mean(0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("algo", ["maml", "anil", "meta_sgd", "reptile"])
def test_adapt_predict_matches_loop_and_leaves_params_alone(algo):
    run = _build(algo, {"inner_lr": 0.02})
    learner = run.learner
    batch = run.bench.eval_batch(torch.Generator().manual_seed(5), 4).to("cpu", torch.float64)
    before = [p.detach().clone() for p in learner.parameters()]
    preds = learner.adapt_predict(batch, [0, 1, 3])
    for p, q in zip(before, learner.parameters()):
        assert torch.equal(p, q.detach())
    assert set(preds) == {0, 1, 3} and preds[3].shape == batch.query_y.shape
    if algo != "maml":
        return
    theta = learner.theta.detach()
    for i in range(batch.num_tasks):
        w = theta.clone()
        for k in range(1, 4):
            w.requires_grad_()
            (g,) = torch.autograd.grad(F.mse_loss(mlp(w, batch.support_x[i]), batch.support_y[i]), w)
            w = (w - 0.02 * g).detach()
            if k in (1, 3):
                torch.testing.assert_close(preds[k][i], mlp(w, batch.query_x[i]))


def test_batched_forward_equals_per_task(f64):
    run = _build("maml")
    net = run.learner.net
    g = torch.Generator().manual_seed(0)
    params = torch.stack([net.init_flat(g, torch.float64) for _ in range(5)])
    x = torch.randn(5, 7, 1, dtype=torch.float64)
    out = net(params, x)
    for i in range(5):
        torch.testing.assert_close(out[i], mlp(params[i], x[i]))
    shared = net(params[0], x)
    torch.testing.assert_close(shared[3], mlp(params[0], x[3]))


def test_inner_update_goes_through_task_step(monkeypatch):
    from metareg import ops

    calls = []
    real = ops.task_step

    def spy(p, g, lr):
        calls.append((tuple(p.shape), tuple(g.shape)))
        return real(p, g, lr)

    monkeypatch.setattr(ops, "task_step", spy)
    run = _build("maml", {"inner_steps": 2}, path="autograd")
    run.learner.step(_batch(run))
    # one call per inner step, covering all 25 tasks and every parameter tensor at once
    assert calls == [((1761,), (25, 1761)), ((25, 1761), (25, 1761))]


def test_compile_where_the_closed_form_does_not_apply_warns_and_still_trains():
    run = _build("maml", {"combiner": "pcgrad", "compile": True})
    with pytest.warns(UserWarning, match="compile=true ignored"):
        run.learner.step(_batch(run))
    assert torch.isfinite(run.learner.theta.grad).all()


@pytest.mark.slow  # torch.compile takes 15-50 s on this CPU
def test_compiled_meta_gradient_equals_per_task_loop():
    run = _build("maml", {"inner_steps": 2, "inner_lr": 0.05, "compile": True})
    learner, batch = run.learner, _batch(run)
    learner.step(batch)
    assert "_compiled_fn" in learner.__dict__
    theta = learner.theta.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(_loop_maml(theta, batch, 0.05, 2, first_order=False), theta)
    torch.testing.assert_close(learner.theta.grad, want, rtol=1e-10, atol=1e-12)
