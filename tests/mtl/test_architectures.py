"""Multi-task architectures: shapes, gradients, and each paper's defining identity."""

import math

import pytest
import torch

import metareg
from metareg.runner import Run

ARCHITECTURES = ["hard_sharing", "cross_stitch", "soft_sharing_l2", "single_task", "low_rank", "mmoe",
                 "adversarial_sharing"]


def build(algo, overrides=None, bench="sinusoid_mtl"):
    over = {"dtype": "float64", "benchmark.num_tasks": 4, "benchmark.meta_batch": 3, **(overrides or {})}
    r = Run(algo, bench, over)
    r.build()
    return r


def train_batch(r, seed=0):
    return r.bench.train_batch(torch.Generator().manual_seed(seed)).to("cpu", torch.float64)


@pytest.mark.parametrize("algo", ARCHITECTURES)
def test_forward_shapes_and_step_fills_every_gradient(algo):
    r = build(algo)
    learner, batch = r.learner, train_batch(r)
    x = torch.cat([batch.support_x, batch.query_x], 1)
    feats = learner.features(x, batch.task_ids)
    assert feats.shape[:2] == x.shape[:2]
    pred = learner.predict_tasks(x, batch.task_ids)
    assert pred.shape == (*x.shape[:2], 1)
    assert learner.shared.dim() == 1 and learner.heads.shape[0] == 4
    metrics = learner.step(batch)
    assert math.isfinite(metrics["loss"])
    for name, p in learner.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # heads are task-specific: a task outside the batch gets no gradient in its head
    unused = sorted(set(range(4)) - set(batch.task_ids.tolist()))
    assert unused and all(learner.heads.grad[m].abs().sum() == 0 for m in unused)
    assert learner.shared.grad.abs().sum() > 0


@pytest.mark.parametrize("algo", ARCHITECTURES)
def test_new_task_encoder_adapts_without_touching_parameters(algo):
    r = build(algo, {"head_fit": "sgd", "adapt_encoder": True, "adapt_lr": 0.05})
    learner = r.learner
    ev = r.bench.eval_batch(torch.Generator().manual_seed(1), 3).to("cpu", torch.float64)
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    ev.query_x, ev.query_y = ev.support_x, ev.support_y  # score on the support set: fine-tuning must fit it
    preds = learner.adapt_predict(ev, [0, 5])
    err = {k: ((p - ev.support_y) ** 2).mean().item() for k, p in preds.items()}
    assert err[5] < err[0]
    for n, p in learner.named_parameters():
        assert torch.equal(before[n], p.detach()), n


def test_adapt_encoder_needs_sgd_head():
    with pytest.raises(metareg.errors.ConfigError, match="head_fit='sgd'"):
        build("hard_sharing", {"adapt_encoder": True, "head_fit": "ridge"})


def test_cross_stitch_with_identity_alphas_is_independent_networks():
    r = build("cross_stitch")
    cs = r.learner
    m, u = 4, cs.units
    with torch.no_grad():
        cs.shared[m * cs.p_col:] = torch.eye(m, dtype=torch.float64).repeat(u, 1, 1).reshape(-1)
        cs.shared[: m * cs.p_col] = torch.randn(m * cs.p_col, dtype=torch.float64)  # distinct columns
    batch = train_batch(r)
    x = batch.support_x
    feats = cs.features(x, batch.task_ids)
    cols = cs.shared[: m * cs.p_col].view(m, cs.p_col)
    alone = cs.net.forward(cols[batch.task_ids], x, 0, cs.net.head_from)
    torch.testing.assert_close(feats, alone)
    # and with mixing alphas the columns do talk to each other
    with torch.no_grad():
        cs.shared[m * cs.p_col:] = torch.full((u * m * m,), 1.0 / m, dtype=torch.float64)
    assert not torch.allclose(cs.features(x, batch.task_ids), alone)


def test_cross_stitch_initial_alphas_are_near_identity_rows_summing_to_one():
    cs = build("cross_stitch", {"alpha_self": 0.8}).learner
    m = 4
    alpha = cs.shared[m * cs.p_col:].view(cs.units, m, m)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(cs.units, m, dtype=torch.float64))
    assert torch.all(alpha.diagonal(dim1=1, dim2=2) == 0.8)


def test_low_rank_rank_one_with_unit_coefficients_is_hard_sharing():
    lr = build("low_rank", {"rank": 1}).learner
    batch = train_batch(build("low_rank", {"rank": 1}))
    with torch.no_grad():
        lr.coef.fill_(1.0)
    encoder = lr.shared  # the single basis is the one shared encoder
    expect = lr.net.forward(encoder, batch.support_x, 0, lr.net.head_from)
    torch.testing.assert_close(lr.features(batch.support_x, batch.task_ids), expect)


def test_low_rank_rank_m_with_identity_coefficients_is_independent_networks():
    r = build("low_rank", {"rank": 4})
    lr = r.learner
    with torch.no_grad():
        lr.coef.copy_(torch.eye(4, dtype=torch.float64).unsqueeze(1).expand(4, len(lr.sizes), 4))
    batch = train_batch(r)
    bases = lr.shared.view(4, lr.p_enc)
    expect = lr.net.forward(bases[batch.task_ids], batch.support_x, 0, lr.net.head_from)
    torch.testing.assert_close(lr.features(batch.support_x, batch.task_ids), expect)


def test_mmoe_gates_are_distributions_and_mix_the_experts():
    r = build("mmoe", {"experts": 3})
    mm = r.learner
    with torch.no_grad():
        mm.gates.normal_()
    batch = train_batch(r)
    w = mm.gate(mm.gates[batch.task_ids], batch.support_x)
    assert w.shape == (3, batch.support_x.shape[1], 3)
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:2], dtype=torch.float64))
    assert (w > 0).all()
    # eq. (6) by hand: sum_e g_e(x) f_e(x)
    experts = mm.shared.view(3, mm.p_exp)
    f = torch.stack([mm.net.forward(experts[e], batch.support_x, 0, mm.net.head_from) for e in range(3)], -1)
    torch.testing.assert_close(mm.features(batch.support_x, batch.task_ids), (f * w.unsqueeze(2)).sum(-1))


def test_gradient_reversal_flips_the_adversarial_gradient_into_the_shared_encoder():
    r = build("adversarial_sharing", {"orthogonality": 0.0, "adversarial": 1.0})
    adv = r.learner
    batch = train_batch(r)
    _, extra, metrics = adv.objective(batch)
    (through_grl,) = torch.autograd.grad(extra, adv.shared)
    # the same discriminator loss without the reversal layer
    x = torch.cat([batch.support_x, batch.query_x], 1)
    s = adv.encode(adv.shared, x)
    logits = adv.disc_net.forward(adv.disc, s)
    t, n = s.shape[:2]
    ce = torch.nn.functional.cross_entropy(logits.reshape(t * n, -1), batch.task_ids.view(t, 1).expand(t, n).reshape(-1))
    (plain,) = torch.autograd.grad(ce, adv.shared, retain_graph=True)
    assert plain.abs().sum() > 0
    torch.testing.assert_close(through_grl, -plain)
    # the discriminator itself is trained to minimise (no reversal on its own parameters)
    (d_grl,) = torch.autograd.grad(adv.objective(batch)[1], adv.disc)
    (d_plain,) = torch.autograd.grad(ce, adv.disc)
    torch.testing.assert_close(d_grl, d_plain)
    assert 0 <= metrics["discriminator_acc"] <= 1


def test_orthogonality_loss_is_the_papers_frobenius_norm():
    r = build("adversarial_sharing", {"orthogonality": 1.0, "adversarial": 0.0})
    adv = r.learner
    batch = train_batch(r)
    _, extra, _ = adv.objective(batch)
    x = torch.cat([batch.support_x, batch.query_x], 1)
    s = adv.encode(adv.shared, x)
    h = adv.encode(adv.private[batch.task_ids], x)
    n = x.shape[1]
    expect = sum(torch.linalg.matrix_norm(s[t].T @ h[t]) ** 2 for t in range(len(s))) / len(s) / n**2
    torch.testing.assert_close(extra, expect)


def test_soft_sharing_penalty_gradient_is_its_closed_form():
    lam = 0.3
    r = build("soft_sharing_l2", {"penalty": lam})
    ss = r.learner
    with torch.no_grad():
        ss.shared.normal_()
    theta = ss.encoders
    m = theta.shape[0]
    pen = ss.penalty()
    pairs = [(s, t) for s in range(m) for t in range(s + 1, m)]
    pairwise = lam * sum(((theta[s] - theta[t]) ** 2).sum() for s, t in pairs) / len(pairs)
    torch.testing.assert_close(pen, pairwise)
    (g,) = torch.autograd.grad(pen, ss.shared)
    closed = torch.stack([lam * 4 / (m * (m - 1)) * sum(theta[t] - theta[s] for s in range(m) if s != t)
                          for t in range(m)])
    torch.testing.assert_close(g.view(m, -1), closed.detach())


def test_single_task_networks_do_not_interact():
    r = build("single_task")
    st = r.learner
    assert st.penalty() is None
    batch = train_batch(r)
    losses = st.task_losses(batch)
    jac = metareg.task_jacobian(losses, st.shared).view(len(losses), 4, -1)
    for row, task in enumerate(batch.task_ids.tolist()):
        others = [m for m in range(4) if m != task]
        assert jac[row, others].abs().sum() == 0 and jac[row, task].abs().sum() > 0


def test_gradient_combiner_update_plus_regulariser_gradient():
    r = build("soft_sharing_l2", {"penalty": 0.5, "combiner": "upgrad"})
    ss = r.learner
    with torch.no_grad():
        ss.shared.add_(0.1 * torch.randn(ss.shared.shape, dtype=torch.float64))
    batch = train_batch(r)
    losses = ss.task_losses(batch)
    jac = metareg.task_jacobian(losses, ss.shared)
    expect = ss.combiner.aggregate(jac, losses.detach(), batch.task_ids)
    expect = expect + torch.autograd.grad(ss.penalty(), ss.shared)[0]
    ss.step(batch)
    torch.testing.assert_close(ss.shared.grad, expect)


def test_conflict_log_is_the_cosine_matrix_of_the_task_gradients():
    r = build("hard_sharing", {"combiner": "equal", "conflict_every": 1})
    learner = r.learner
    batch = train_batch(r)
    losses = learner.task_losses(batch)
    jac = metareg.task_jacobian(losses, learner.shared)
    m = learner.step(batch)
    cos = torch.tensor(m["grad_cosine"], dtype=torch.float64)
    t = len(batch.task_ids)
    assert cos.shape == (t, t) and m["grad_cosine_tasks"] == batch.task_ids.tolist()
    unit = jac / jac.norm(dim=1, keepdim=True)
    torch.testing.assert_close(cos, unit @ unit.T)
    torch.testing.assert_close(cos.diagonal(), torch.ones(t, dtype=torch.float64))
    assert torch.allclose(cos, cos.T) and (cos.abs() <= 1 + 1e-9).all()
    off = cos[~torch.eye(t, dtype=torch.bool)]
    assert m["grad_cosine_mean"] == pytest.approx(off.mean().item())
    assert m["grad_conflict_frac"] == pytest.approx((off < 0).double().mean().item())


@pytest.mark.parametrize("combiner", ["equal", "pcgrad"])
def test_conflicts_are_logged_every_n_steps(combiner):
    r = build("hard_sharing", {"combiner": combiner, "conflict_every": 3})
    logged = ["grad_cosine" in r.learner.step(train_batch(r, s)) for s in range(6)]
    assert logged == [False, False, True, False, False, True]
    r = build("hard_sharing", {"combiner": combiner, "conflict_every": 1})
    assert all("grad_cosine" in r.learner.step(train_batch(r, s)) for s in range(3))
    r = build("hard_sharing", {"combiner": combiner, "conflict_every": 0})
    assert not any("grad_cosine" in r.learner.step(train_batch(r, s)) for s in range(3))


def test_combiner_state_is_in_the_step_metrics():
    r = build("hard_sharing", {"combiner": "gradnorm", "benchmark.meta_batch": 4})
    m = r.learner.step(train_batch(r))
    assert len(m["combiner.weights"]) == 4 and sum(m["combiner.weights"]) == pytest.approx(4)
