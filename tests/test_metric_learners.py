"""Metric-based learners on a small synthetic classification family (Gaussian blobs), checked
against their papers' formulas written out one task and one class at a time."""


import pytest
import torch

import metareg
from metareg import plugins
from metareg.runner import Run


@pytest.fixture
def manager(blobs_manager):
    return blobs_manager


def _built(algo, manager, **over):
    r = Run(algo, "blobs", {"dtype": "float64", **over}, manager=manager)
    r.build()
    batch = r.bench.train_batch(torch.Generator().manual_seed(0)).to("cpu", torch.float64)
    return r.learner, batch


def test_protonet_logits_are_negative_squared_distances_to_class_means(manager):
    learner, b = _built("protonet", manager)
    q, s = learner.embed(b.query_x), learner.embed(b.support_x)
    logits = learner.logits(q, s, b.support_y)
    for t in range(b.num_tasks):
        for k in range(3):
            proto = s[t][b.support_y[t] == k].mean(0)
            torch.testing.assert_close(logits[t, :, k], -((q[t] - proto) ** 2).sum(-1))


def test_protonet_float32_predictions_survive_a_shared_offset(manager):
    """Embeddings that share a large offset (+100 on every feature): |q|^2 - 2 q.c + |c|^2 cancels
    ~1e6-sized terms to O(1) distances, which lost the float32 argmax of ~1% of the queries.  The
    float32 logits must predict what float64 predicts from the same (float32) embeddings, their
    values must match the direct difference form, and gradients must flow to every embedding."""
    learner, _ = _built("protonet", manager)
    g = torch.Generator().manual_seed(0)
    t, ways, shots, queries, f = 16, 3, 5, 40, 64
    centers = torch.randn(t, ways, 1, f, generator=g, dtype=torch.float64) * 0.1  # near-ties: old form lost 13 of 1920
    support = (centers + torch.randn(t, ways, shots, f, generator=g, dtype=torch.float64)).reshape(t, -1, f)
    query = (centers + torch.randn(t, ways, queries, f, generator=g, dtype=torch.float64)).reshape(t, -1, f)
    labels = torch.arange(ways).repeat_interleave(shots).expand(t, -1)
    support, query = (support + 100).float(), (query + 100).float()  # the float32 values both paths see
    want = learner.logits(query.double(), support.double(), labels)
    protos = torch.stack([support.double()[:, labels[0] == k].mean(1) for k in range(ways)], 1)
    direct = -((query.double()[:, :, None] - protos[:, None]) ** 2).sum(-1)
    torch.testing.assert_close(want, direct)
    q32, s32 = query.clone().requires_grad_(), support.clone().requires_grad_()
    got = learner.logits(q32, s32, labels)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    torch.testing.assert_close(got.double(), want, atol=1e-3, rtol=1e-5)
    got.logsumexp(-1).sum().backward()
    assert q32.grad.abs().sum() > 0 and s32.grad.abs().sum() > 0
    assert torch.isfinite(q32.grad).all() and torch.isfinite(s32.grad).all()


def test_protonet_cosine_option(manager):
    learner, b = _built("protonet", manager, distance="cosine")
    q, s = learner.embed(b.query_x), learner.embed(b.support_x)
    logits = learner.logits(q, s, b.support_y)
    proto = s[0][b.support_y[0] == 1].mean(0)
    want = 10.0 * torch.nn.functional.cosine_similarity(q[0], proto.unsqueeze(0), dim=-1)
    torch.testing.assert_close(logits[0, :, 1], want)


def test_matching_net_is_attention_over_support_labels(manager):
    learner, b = _built("matching_net", manager)
    q, s = learner.embed(b.query_x), learner.embed(b.support_x)
    logp = learner.logits(q, s, b.support_y)
    for t in range(2):
        cos = torch.nn.functional.cosine_similarity(q[t].unsqueeze(1), s[t].unsqueeze(0), dim=-1)  # [Q, S]
        a = torch.softmax(cos, -1)
        for k in range(3):
            torch.testing.assert_close(logp[t, :, k].exp(), a[:, b.support_y[t] == k].sum(-1))


def test_relation_net_scores_sum_of_class_embeddings(manager):
    learner, b = _built("relation_net", manager)
    q, s = learner.embed(b.query_x), learner.embed(b.support_x)
    scores = learner.logits(q, s, b.support_y)
    # the pairs built by hand: each query beside the sum of each class's support embeddings
    pairs = torch.stack([torch.stack([torch.stack([torch.cat([q[t, i], s[t][b.support_y[t] == k].sum(0)])
                                                   for k in range(scores.shape[2])]) for i in range(q.shape[1])])
                         for t in range(q.shape[0])])
    torch.testing.assert_close(scores, torch.sigmoid(learner.relation(pairs)))
    assert ((scores >= 0) & (scores <= 1)).all()


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_relation_module_normalisation_stays_inside_an_episode(norm):
    from metareg_plugins.relation_net import _Relation

    torch.manual_seed(0)
    g = _Relation(6, 4, 3, norm).double()
    pairs = torch.randn(2, 5, 3, 6, dtype=torch.float64)
    out = g(pairs)
    assert out.shape == (2, 5, 3)
    other = pairs.clone()
    other[1] *= 3.0  # another task of the meta-batch: never changes this task's scores
    torch.testing.assert_close(g(other)[0], out[0])
    moved = pairs.clone()
    moved[0, 0, 0] += 5.0  # one pair of task 0: with batch statistics, the episode's other scores move
    changed = (g(moved)[0] - out[0]).abs().flatten()[1:]
    assert (changed.max() > 1e-6) == (norm == "batch")


def test_relation_batch_norm_from_support_pairs_only():
    # non-transductive episodes: statistics from the first stats_rows examples' pairs, so a query
    # pair moves only its own score, while a support pair moves every score of the episode
    from metareg_plugins.relation_net import _Relation

    torch.manual_seed(0)
    g = _Relation(6, 4, 3, "batch").double()
    pairs = torch.randn(2, 5, 3, 6, dtype=torch.float64)
    out = g(pairs, stats_rows=2)
    query_moved = pairs.clone()
    query_moved[0, 4, 1] += 5.0
    diff = (g(query_moved, stats_rows=2) - out).abs()
    diff[0, 4, 1] = 0.0
    assert diff.max() == 0
    support_moved = pairs.clone()
    support_moved[0, 0, 0] += 5.0
    assert (g(support_moved, stats_rows=2)[0, 2:] - out[0, 2:]).abs().max() > 1e-6  # the queries move too


@pytest.mark.parametrize("algo,over", [("protonet", {}), ("matching_net", {}), ("matching_net", {"fce": True}),
                                       ("relation_net", {}), ("maml", {"inner_lr": 0.5}), ("protonet", {"distance": "cosine"})])
def test_learners_learn_blobs_far_above_chance(algo, over, manager):
    s = Run(algo, "blobs", {"steps": 150, "eval_tasks": 200, "val_every": 0, "lr": 3e-3, **over}, manager=manager).execute(progress=False)
    acc = s["accuracy"] if "accuracy" in s else s["accuracy_after_1_step"]
    assert acc > 0.6, s  # chance is 1/3


def test_metric_learner_reports_plain_accuracy(manager):
    s = Run("protonet", "blobs", {"steps": 2, "eval_tasks": 5, "val_every": 0}, manager=manager).execute(progress=False)
    assert "accuracy" in s and "accuracy_ci95" in s and not any(k.startswith("accuracy_after") for k in s)
