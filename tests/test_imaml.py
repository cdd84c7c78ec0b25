"""iMAML (plugins/imaml.py) in float64 against per-task oracles on tiny MLPs.

* the inner loop: proximal gradient steps, one task at a time;
* the meta-gradient with enough CG iterations: the exact implicit gradient
  (I + H_t / lam)^{-1} grad L_t^query(phi_t) with a dense Hessian per task, averaged over tasks;
* with few CG iterations: the same CG run one task at a time (the batched CG keeps per-task steps);
* regression (mse) and classification (cross_entropy), explicit-VJP and autograd inner gradients.
"""

import pytest
import torch
import torch.nn.functional as F

from metareg.learners import LearnerContext
from metareg.nets import mlp
from metareg.plugins import get_registry
from metareg.runner import Run
from metareg.tasks import TaskBatch, TaskInfo

D = torch.float64
HIDDEN = (6, 5)


def _learner(loss, vjp=True, **over):
    out = 3 if loss == "cross_entropy" else 1
    d_in = 4 if loss == "cross_entropy" else 1
    info = TaskInfo(input_shape=(d_in,), output_dim=out, loss=loss,
                    metric="accuracy" if loss == "cross_entropy" else "mse")
    net = mlp((d_in,), out, hidden=HIDDEN)
    ctx = LearnerContext(task=info, make_backbone=lambda name=None: net, generator=torch.Generator().manual_seed(1),
                         dtype=D)
    spec = get_registry().get("algorithm", "imaml")
    learner = spec.factory(spec.config(**{"inner_lr": 0.2, "inner_steps": 4, "lam": 0.7, **over}), ctx)
    learner.__dict__["_vjp"] = vjp and learner._vjp  # cached_property: False forces autograd.grad
    g = torch.Generator().manual_seed(4)
    t, s, q = 4, 6, 9
    if loss == "cross_entropy":
        batch = TaskBatch(torch.randn(t, s, d_in, generator=g, dtype=D), torch.randint(0, 3, (t, s), generator=g),
                          torch.randn(t, q, d_in, generator=g, dtype=D), torch.randint(0, 3, (t, q), generator=g))
    else:
        batch = TaskBatch(torch.randn(t, s, 1, generator=g, dtype=D), torch.randn(t, s, 1, generator=g, dtype=D),
                          torch.randn(t, q, 1, generator=g, dtype=D), torch.randn(t, q, 1, generator=g, dtype=D))
    return learner, batch


def _forward(theta, x):
    """The MLP by hand: theta [P] sliced into (weight, bias) per layer."""
    body = sum(o * (i + 1) for i, o in zip([x.shape[-1], *HIDDEN], HIDDEN))
    widths = [x.shape[-1], *HIDDEN, (theta.numel() - body) // (HIDDEN[-1] + 1)]
    off = 0
    for j in range(len(widths) - 1):
        i, o = widths[j], widths[j + 1]
        w = theta[off: off + o * i].view(o, i)
        off += o * i
        b = theta[off: off + o]
        off += o
        x = F.linear(x, w, b)
        if j < len(widths) - 2:
            x = torch.relu(x)
    assert off == theta.numel()
    return x


def _loss(theta, x, y, loss):
    pred = _forward(theta, x)
    return F.cross_entropy(pred, y) if loss == "cross_entropy" else F.mse_loss(pred, y)


def _adapt(theta, x, y, loss, lr, steps, lam):
    phi = theta.clone()
    for _ in range(steps):
        p = phi.detach().requires_grad_()
        (g,) = torch.autograd.grad(_loss(p, x, y, loss), p)
        phi = (phi - lr * (g + lam * (phi - theta))).detach()
    return phi


def _per_task(learner, batch, loss, solve):
    c = learner.config
    theta = learner.theta.detach()
    rows = []
    for i in range(batch.num_tasks):
        phi = _adapt(theta, batch.support_x[i], batch.support_y[i], loss, c.inner_lr, c.inner_steps, c.lam)
        p = phi.clone().requires_grad_()
        (gq,) = torch.autograd.grad(_loss(p, batch.query_x[i], batch.query_y[i], loss), p)
        h = torch.autograd.functional.hessian(lambda w: _loss(w, batch.support_x[i], batch.support_y[i], loss), phi)
        rows.append(solve(torch.eye(phi.numel(), dtype=D) + h / c.lam, gq))
    return torch.stack(rows)


def _cg(a, b, steps):
    """Conjugate gradient stopped at the first direction of non-positive curvature (then b if
    that is the first direction)."""
    x, r = torch.zeros_like(b), b.clone()
    d, rr = r.clone(), r @ r
    for i in range(steps):
        ad = a @ d
        if d @ ad <= 0:
            return b if i == 0 else x
        alpha = rr / (d @ ad)
        x, r = x + alpha * d, r - alpha * ad
        rr_new = r @ r
        d, rr = r + rr_new / rr * d, rr_new
    return x


@pytest.mark.parametrize("vjp", [True, False], ids=["vjp", "autograd"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_cg_meta_gradient_equals_the_exact_implicit_gradient(loss, vjp):
    learner, batch = _learner(loss, vjp, cg_steps=80, lam=4.0)
    learner.step(batch)

    def solve(a, b):
        assert torch.linalg.eigvalsh(a).min() > 0  # the paper's setting: phi a strict minimiser
        return torch.linalg.solve(a, b)

    want = _per_task(learner, batch, loss, solve)
    assert want.abs().max() > 1e-4
    torch.testing.assert_close(learner.theta.grad, want.mean(0), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_few_cg_steps_equal_a_per_task_cg(loss):
    learner, batch = _learner(loss, cg_steps=3)
    learner.step(batch)
    want = _per_task(learner, batch, loss, lambda a, b: _cg(a, b, 3))
    exact = _per_task(learner, batch, loss, lambda a, b: torch.linalg.solve(a, b))
    assert not torch.allclose(want, exact, rtol=1e-6, atol=1e-8)  # 3 steps are not converged: a real check
    torch.testing.assert_close(learner.theta.grad, want.mean(0), rtol=1e-10, atol=1e-12)


def test_first_order_is_the_query_gradient_at_phi():
    learner, batch = _learner("mse", first_order=True)
    learner.step(batch)
    want = _per_task(learner, batch, "mse", lambda a, b: b)
    torch.testing.assert_close(learner.theta.grad, want.mean(0), rtol=1e-10, atol=1e-12)


def test_adaptation_solves_the_proximal_problem():
    learner, batch = _learner("cross_entropy")
    preds = learner.adapt_predict(batch, [0, 2, 4])
    theta, c = learner.theta.detach(), learner.config
    for i in range(batch.num_tasks):
        for k in (2, 4):
            phi = _adapt(theta, batch.support_x[i], batch.support_y[i], "cross_entropy", c.inner_lr, k, c.lam)
            torch.testing.assert_close(preds[k][i], _forward(phi, batch.query_x[i]), rtol=1e-10, atol=1e-12)


def test_imaml_runs_with_a_gradient_combiner_and_refuses_loss_weighting():
    run = Run("imaml", "sinusoid", {"dtype": "float64", "seed": 3, "combiner": "pcgrad", "inner_steps": 2})
    run.build()
    run.learner.step(run.bench.train_batch(torch.Generator().manual_seed(0)).to("cpu", D))
    assert torch.isfinite(run.learner.theta.grad).all()
    from metareg.errors import IncompatibleError

    with pytest.raises(IncompatibleError, match="weights task losses"):
        Run("imaml", "sinusoid_mtl", {"combiner": "uncertainty"}).build()


def test_task_chunks_give_the_same_meta_gradient():
    grads = []
    for chunk in (0, 3):
        learner, batch = _learner("cross_entropy", task_chunk=chunk)
        learner.step(batch)
        grads.append(learner.theta.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-14)


def test_cg_stops_at_negative_curvature():
    # lam this small makes I + H/lam indefinite after the few inner steps: CG must stop, not diverge
    learner, batch = _learner("cross_entropy", lam=0.02, inner_lr=0.05, cg_steps=6)
    learner.step(batch)
    stops = []

    def solve(a, b):
        stops.append(bool(torch.linalg.eigvalsh(a).min() < 0))
        return _cg(a, b, 6)

    want = _per_task(learner, batch, "cross_entropy", solve)
    assert any(stops)
    torch.testing.assert_close(learner.theta.grad, want.mean(0), rtol=1e-9, atol=1e-11)
