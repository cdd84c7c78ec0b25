"""Multi-task methods inside meta-learning (metareg/learners/meta_batch.py), in float64.

The per-task meta-gradients a combiner receives come from one backward through the batched
meta-batch run from per-task copies of theta; here they are checked row by row against a plain
per-task loop (a hand-written MLP and inner loop for the MAML family; one episode at a time for the
metric learners and Conv4), and the adversarial option against its formula (gradient reversal:
the encoder gets minus the discriminator's gradient).
"""


import pytest
import torch
import torch.nn.functional as F

import metareg
from metareg import plugins
from metareg.errors import IncompatibleError
from metareg.learners import Combiner, LearnerContext
from metareg.learners.meta_batch import MetaBatchObjective
from metareg.runner import Run
from reference_mlp import mlp

D = torch.float64


class Recorder(Combiner):
    """A gradient combiner that keeps what it was given and returns the plain mean."""

    needs_jacobian = True

    def aggregate(self, jacobian, losses=None, task_ids=None):
        self.jac, self.losses, self.ids = jacobian.detach().clone(), losses, task_ids
        return jacobian.mean(0)


def _record(learner):
    rec = Recorder()
    mo = learner.meta_objective
    mo.combiner, mo.needs_jacobian, mo.plain = rec, True, False
    return rec


def _build(algo, bench="sinusoid", manager=None, **over):
    run = Run(algo, bench, {"dtype": "float64", "seed": 3, **over}, manager=manager)
    run.build()
    batch = run.bench.train_batch(torch.Generator().manual_seed(0)).to("cpu", D)
    return run.learner, batch


# -- the MAML family against a hand-written per-task loop (MLP 1-40-40-1 on sinusoid) ---------------
def _task_loss(theta, batch, i, lr, steps, first_order, head_only=False):
    """Query loss of task i after `steps` inner steps from theta, one task alone."""
    fast = theta
    for _ in range(steps):
        loss = F.mse_loss(mlp(fast, batch.support_x[i]), batch.support_y[i])
        (g,) = torch.autograd.grad(loss, fast, create_graph=not first_order)
        if head_only:
            g = torch.cat([torch.zeros_like(g[:-41]), g[-41:]])
        fast = fast - lr * (g.detach() if first_order else g)
    return F.mse_loss(mlp(fast, batch.query_x[i]), batch.query_y[i])


@pytest.mark.parametrize("algo,steps", [("maml", 1), ("maml", 3), ("fomaml", 2), ("anil", 2), ("meta_sgd", 1)])
def test_per_task_meta_gradients_equal_a_per_task_loop(algo, steps):
    learner, batch = _build(algo, inner_steps=steps, inner_lr=0.05, combiner="pcgrad")
    rec = _record(learner)
    learner.zero_grad()
    learner.step(batch)
    theta = learner.theta.detach().clone().requires_grad_()
    lr = learner.alpha.detach() if algo == "meta_sgd" else 0.05
    t = batch.num_tasks
    want = torch.stack([torch.autograd.grad(_task_loss(theta, batch, i, lr, steps, algo == "fomaml", algo == "anil"),
                                            theta)[0] for i in range(t)])
    assert rec.jac.shape == (t, theta.numel()) and want.abs().max() > 1e-6
    torch.testing.assert_close(rec.jac, want, rtol=1e-10, atol=1e-12)
    # the losses it was handed are the per-task query losses
    losses = torch.stack([_task_loss(theta, batch, i, lr, steps, algo == "fomaml", algo == "anil") for i in range(t)])
    torch.testing.assert_close(rec.losses, losses.detach(), rtol=1e-10, atol=1e-12)
    # the update it returned (the mean) is theta's gradient: the plain meta-gradient
    torch.testing.assert_close(learner.theta.grad, want.mean(0), rtol=1e-10, atol=1e-12)
    if algo == "meta_sgd":  # the learned rates get the gradient of the mean query loss
        alpha = learner.alpha.detach().clone().requires_grad_()
        th = theta.detach().clone().requires_grad_()
        mean = torch.stack([_task_loss(th, batch, i, alpha, steps, False) for i in range(t)]).mean()
        torch.testing.assert_close(learner.alpha.grad, torch.autograd.grad(mean, alpha)[0], rtol=1e-10, atol=1e-12)


def test_reptile_rows_are_the_per_task_displacements():
    learner, batch = _build("reptile", inner_steps=3, combiner="upgrad")
    rec = _record(learner)
    learner.zero_grad()
    learner.step(batch)
    theta = learner.theta.detach()
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    rows = []
    for i in range(batch.num_tasks):
        fast = theta.clone().requires_grad_()
        for _ in range(3):
            (g,) = torch.autograd.grad(F.mse_loss(mlp(fast, x[i]), y[i]), fast)
            fast = (fast - learner.config.inner_lr * g).detach().requires_grad_()
        rows.append(theta - fast.detach())
    torch.testing.assert_close(rec.jac, torch.stack(rows), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(learner.theta.grad, torch.stack(rows).mean(0), rtol=1e-10, atol=1e-12)


def test_default_step_forms_no_jacobian_and_is_the_plain_gradient(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the default step must not form per-task rows")

    monkeypatch.setattr(MetaBatchObjective, "task_rows", staticmethod(boom))
    learner, batch = _build("maml", inner_lr=0.05)
    assert learner.meta_objective.plain and not learner.meta_objective.needs_jacobian
    learner.zero_grad()
    learner.step(batch)
    theta = learner.theta.detach().clone().requires_grad_()
    mean = torch.stack([_task_loss(theta, batch, i, 0.05, 1, False) for i in range(batch.num_tasks)]).mean()
    torch.testing.assert_close(learner.theta.grad, torch.autograd.grad(mean, theta)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("combiner", ["pcgrad", "mgda", "cagrad", "nash_mtl", "upgrad", "gradvac", "gradnorm"])
def test_every_gradient_combiner_runs_on_meta_gradients(combiner):
    # relatedness: fixed training tasks with ids, so the task-aware combiners apply too
    learner, batch = _build("maml", "relatedness", combiner=combiner, inner_lr=0.05)
    learner.zero_grad()
    out = learner.step(batch)
    assert torch.isfinite(learner.theta.grad).all() and learner.theta.grad.abs().max() > 0
    assert out["loss"] > 0


def test_gradient_combiners_match_their_aggregate_of_the_rows():
    learner, batch = _build("maml", "relatedness", combiner="mgda", inner_lr=0.05)
    c = learner.meta_objective.combiner
    rec = _record(learner)
    learner.step(batch)
    learner.zero_grad()
    learner.meta_objective.combiner, learner.meta_objective.needs_jacobian = c, True
    learner.step(batch)
    torch.testing.assert_close(learner.theta.grad, c.aggregate(rec.jac, rec.losses, rec.ids), rtol=1e-10, atol=1e-12)
    assert rec.ids is not None and torch.equal(rec.ids, batch.task_ids)


def test_task_aware_combiners_are_refused_without_task_ids():
    for over in ({"combiner": "gradvac"}, {"combiner": "gradnorm"}, {"adversarial": 0.1}):
        with pytest.raises(IncompatibleError, match="task"):
            _build("maml", **over)


def test_loss_weighting_combiner_weights_the_query_losses():
    learner, batch = _build("maml", "relatedness", combiner="uncertainty", inner_lr=0.05)
    learner.zero_grad()
    learner.step(batch)
    log_var = learner.meta_objective.combiner.log_var
    assert log_var.grad is not None and log_var.grad.abs().max() > 0
    with pytest.raises(IncompatibleError, match="reptile"):
        _build("reptile", "relatedness", combiner="uncertainty")


# -- the adversarial option ----------------------------------------------------------------------
def test_adversarial_gradient_is_reversed_for_the_encoder_only():
    w = 0.5
    plain, batch = _build("maml", "relatedness", inner_lr=0.05)
    adv, _ = _build("maml", "relatedness", inner_lr=0.05, adversarial=w)
    torch.testing.assert_close(adv.theta, plain.theta)  # its own generator: same initialisation
    for lr in (plain, adv):
        lr.zero_grad()
        lr.step(batch)
    mo = adv.meta_objective
    theta = adv.theta.detach().clone().requires_grad_()
    disc = mo.disc.detach().clone().requires_grad_()
    x = torch.cat([batch.support_x, batch.query_x], 1)
    feats = adv.net.forward(theta[: adv.net.head_offset], x, 0, adv.net.head_from)
    t, n = feats.shape[:2]
    logits = mo.disc_net.forward(disc, feats)  # no reversal here
    ce = F.cross_entropy(logits.reshape(t * n, -1), batch.task_ids.view(t, 1).expand(t, n).reshape(-1))
    g_theta, g_disc = torch.autograd.grad(ce, (theta, disc))
    torch.testing.assert_close(adv.theta.grad - plain.theta.grad, -w * g_theta, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(mo.disc.grad, w * g_disc, rtol=1e-9, atol=1e-12)
    assert g_theta[adv.net.head_offset:].abs().max() == 0  # the head is not the encoder


def test_adversarial_with_a_combiner_adds_outside_it():
    w = 0.3
    adv, batch = _build("anil", "relatedness", inner_lr=0.05, adversarial=w)
    both, _ = _build("anil", "relatedness", inner_lr=0.05, adversarial=w, combiner="pcgrad")
    _record(both)  # the mean: then both must give the same gradients
    for lr in (adv, both):
        lr.zero_grad()
        out = lr.step(batch)
    assert "discriminator_acc" in out
    torch.testing.assert_close(both.theta.grad, adv.theta.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(both.meta_objective.disc.grad, adv.meta_objective.disc.grad, rtol=1e-9, atol=1e-12)


# -- metric learners: per-episode gradients of the embedding, one episode at a time ----------------
@pytest.fixture
def manager(blobs_manager):
    return blobs_manager


# blobs whose training tasks carry one of 3 cluster ids (combiners with per-task state need them)
ID_BLOBS = {"benchmark.query": 3, "benchmark.eval_query": 3, "benchmark.dim": 6, "benchmark.hidden": 16,
            "benchmark.num_ids": 3}


@pytest.mark.parametrize("algo,over", [("protonet", {}), ("protonet", {"distance": "cosine"}), ("matching_net", {}),
                                       ("relation_net", {})])
def test_metric_per_episode_gradients_equal_one_episode_at_a_time(algo, over, manager):
    learner, batch = _build(algo, "blobs", manager, combiner="pcgrad", **ID_BLOBS, **over)
    rec = _record(learner)
    learner.zero_grad()
    learner.step(batch)
    rest = [p for p in learner.parameters() if p.requires_grad and p is not learner.theta]
    got_rest = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in rest]
    rows, rest_sum = [], [torch.zeros_like(p) for p in rest]
    for i in range(batch.num_tasks):
        logits, _ = learner._episode(batch.slice(i, i + 1))
        loss = learner.loss_from_logits(logits, batch.query_y[i: i + 1])
        g = torch.autograd.grad(loss, [learner.theta, *rest], allow_unused=True)
        rows.append(g[0])
        rest_sum = [a + (torch.zeros_like(a) if b is None else b) for a, b in zip(rest_sum, g[1:])]
    want = torch.stack(rows)
    assert want.abs().max() > 1e-6
    torch.testing.assert_close(rec.jac, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(learner.theta.grad, want.mean(0), rtol=1e-10, atol=1e-12)
    for a, b in zip(got_rest, rest_sum):
        torch.testing.assert_close(a, b / batch.num_tasks, rtol=1e-10, atol=1e-12)
    # and the plain step's gradient is the same mean
    plain, _ = _build(algo, "blobs", manager, **ID_BLOBS, **over)
    plain.zero_grad()
    plain.step(batch)
    torch.testing.assert_close(plain.theta.grad, want.mean(0), rtol=1e-10, atol=1e-12)


def test_metric_adversarial_reverses_the_embedding_gradient(manager):
    w = 0.4
    plain, batch = _build("protonet", "blobs", manager, **ID_BLOBS)
    adv, _ = _build("protonet", "blobs", manager, adversarial=w, **ID_BLOBS)
    for lr in (plain, adv):
        lr.zero_grad()
        lr.step(batch)
    mo = adv.meta_objective
    theta = adv.theta.detach().clone().requires_grad_()
    s = batch.support_x.shape[1]
    emb = adv.embed(torch.cat([batch.support_x, batch.query_x], 1), support_size=s, theta=theta)
    t, n = emb.shape[:2]
    ce = F.cross_entropy(mo.disc_net.forward(mo.disc.detach(), emb).reshape(t * n, -1),
                         batch.task_ids.view(t, 1).expand(t, n).reshape(-1))
    (g,) = torch.autograd.grad(ce, theta)
    torch.testing.assert_close(adv.theta.grad - plain.theta.grad, -w * g, rtol=1e-9, atol=1e-12)


# -- Conv4: the rows through grouped convolutions and per-task batch norm ---------------------------
@pytest.mark.parametrize("algo", ["maml", "fomaml", "protonet"])
def test_conv4_per_task_meta_gradients_equal_one_task_at_a_time(algo):
    from metareg import conv4
    from metareg.plugins import get_registry
    from metareg.tasks import TaskBatch, TaskInfo

    shape, ways = (1, 16, 16), 3
    spec = get_registry().get("algorithm", algo)
    info = TaskInfo(input_shape=shape, output_dim=ways, loss="cross_entropy", metric="accuracy")
    rec = Recorder()
    ctx = LearnerContext(task=info, make_backbone=lambda name=None: conv4(shape, ways, width=4),
                         generator=torch.Generator().manual_seed(2), dtype=D, make_combiner=lambda name, extra: rec)
    over = {"inner_lr": 0.3, "inner_steps": 2} if algo != "protonet" else {}
    learner = spec.factory(spec.config(combiner="pcgrad", **over), ctx)
    g = torch.Generator().manual_seed(7)
    t, s, q = 3, 3, 6
    batch = TaskBatch(torch.randn(t, s, *shape, generator=g, dtype=D), torch.randint(0, ways, (t, s), generator=g),
                      torch.randn(t, q, *shape, generator=g, dtype=D), torch.randint(0, ways, (t, q), generator=g))
    learner.zero_grad()
    learner.step(batch)
    rows = []
    for i in range(t):  # the plain step on one task alone (checked against a reference loop elsewhere)
        learner.meta_objective.needs_jacobian, learner.meta_objective.plain = False, True
        learner.zero_grad()
        learner.step(batch.slice(i, i + 1))
        rows.append(learner.theta.grad.clone())
    want = torch.stack(rows)
    assert want.abs().max() > 1e-6
    torch.testing.assert_close(rec.jac, want, rtol=1e-9, atol=1e-11)
