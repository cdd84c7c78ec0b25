"""Multi-task benchmarks: determinism, task ids that match the targets, held-out tasks that are new."""

import dataclasses
import math

import pytest
import torch

from metareg import plugins
from metareg.tasks.mtl_images import DIGIT_TASKS

SMALL = {
    "gradnorm_toy": {"num_tasks": 3, "input_dim": 20, "output_dim": 5},
    "relatedness": {"num_tasks": 4, "meta_batch": 3},
    "digits_mtl": {"num_tasks": 4, "meta_batch": 3},
    "glyphs_mtl": {"num_tasks": 4, "meta_batch": 3, "query": 2, "max_per_group": 3, "instances": 6, "train_instances": 4},
}


def make(name, **over):
    spec = plugins.get_registry().get("benchmark", name)
    return spec.factory(spec.config(**{**SMALL[name], **over}))


def gen(seed):
    return torch.Generator().manual_seed(seed)


def same(a, b):
    fields = [f.name for f in dataclasses.fields(a)]
    return all((getattr(a, f) is None and getattr(b, f) is None) or torch.equal(getattr(a, f), getattr(b, f))
               for f in fields)


@pytest.mark.parametrize("name", list(SMALL))
def test_seeded_sampling_is_deterministic_and_ids_are_valid(name):
    b1, b2 = make(name), make(name)
    assert same(b1.train_batch(gen(3)), b2.train_batch(gen(3)))
    assert same(b1.eval_batch(gen(4), 5), b2.eval_batch(gen(4), 5))
    assert same(b1.train_tasks_batch(gen(5)), b2.train_tasks_batch(gen(5)))
    assert not same(b1.train_batch(gen(3)), b1.train_batch(gen(6)))
    batch = b1.train_batch(gen(0))
    m = b1.info.num_train_tasks
    ids = batch.task_ids.tolist()
    assert len(ids) == len(set(ids)) == batch.num_tasks and all(0 <= i < m for i in ids)
    assert b1.eval_batch(gen(0), 3).task_ids is None
    assert b1.train_tasks_batch(gen(0)).task_ids.tolist() == list(range(m))


@pytest.mark.parametrize("name", list(SMALL))
def test_provides_what_learners_need(name):
    spec = plugins.get_registry().get("benchmark", name)
    assert {"fixed_tasks", "episodic"} <= spec.provides
    assert ("classification" in spec.provides) == (spec.metric == "accuracy")


def test_gradnorm_toy_targets_and_scales():
    b = make("gradnorm_toy")
    torch.testing.assert_close(b.sigmas, torch.tensor([1.0, 10.0, 100.0]))
    batch = b.train_batch(gen(0))
    eps, sigma = b.tasks
    ids = batch.task_ids
    expect = sigma[ids].view(-1, 1, 1) * torch.tanh(torch.einsum("toi,tni->tno", b.b + eps[ids], batch.support_x))
    torch.testing.assert_close(batch.support_y, expect)
    # paper's statistics: B ~ N(0, 10), eps ~ N(0, 3.5)
    big = make("gradnorm_toy", input_dim=250, output_dim=100)
    assert big.b.var().item() == pytest.approx(10, rel=0.05)
    assert big.tasks[0].var().item() == pytest.approx(3.5, rel=0.05)


def test_gradnorm_toy_held_out_tasks_are_new():
    b = make("gradnorm_toy")
    ev = b.eval_batch(gen(1), 4)
    eps, sigma = b.tasks
    for t in range(4):
        for m in range(3):
            train_y = sigma[m] * torch.tanh(ev.support_x[t] @ (b.b + eps[m]).T)
            assert not torch.allclose(train_y, ev.support_y[t])


def test_relatedness_targets_follow_rho():
    one = make("relatedness", rho=1.0, noise=0.0)
    x = torch.randn(1, 50, one.config.input_dim).expand(4, -1, -1)
    y = one.clean_targets(one.tasks, x)
    assert torch.allclose(y, y[:1].expand_as(y))  # rho = 1: one task M times
    zero = make("relatedness", rho=0.0, noise=0.0)
    x = torch.randn(1, 2000, zero.config.input_dim).expand(4, -1, -1)
    y = zero.clean_targets(zero.tasks, x).squeeze(-1)
    corr = torch.corrcoef(y)
    off = corr[~torch.eye(4, dtype=torch.bool)]
    assert abs(off.mean().item()) < 0.25  # independent draws: correlations scatter around 0
    assert y.std(1).mean().item() == pytest.approx(1.0, abs=0.15)  # unit signal variance
    half = make("relatedness", rho=0.9, noise=0.0)
    yh = half.clean_targets(half.tasks, x).squeeze(-1)
    assert torch.corrcoef(yh)[~torch.eye(4, dtype=torch.bool)].mean() > off.mean() + 0.3


def test_relatedness_training_batches_come_from_the_fixed_training_sets():
    b = make("relatedness", train_size=20)
    batch = b.train_batch(gen(0))
    for row, task in enumerate(batch.task_ids.tolist()):
        pool = b.train_x[task]
        for x in batch.support_x[row]:
            assert (pool == x).all(1).any()
    # fresh test samples of the trained tasks are not training examples
    test = b.train_tasks_batch(gen(0))
    assert not any((b.train_x[0] == x).all(1).any() for x in test.query_x[0])


def test_relatedness_held_out_tasks_are_new():
    b = make("relatedness", rho=0.5, noise=0.0)
    ev = b.eval_batch(gen(1), 3)
    for t in range(3):
        for m in range(4):
            params = tuple(p[m:m + 1] for p in b.tasks)
            assert not torch.allclose(b.clean_targets(params, ev.support_x[t:t + 1]), ev.support_y[t:t + 1])


def test_digits_labels_match_their_task():
    b = make("digits_mtl")
    batch = b.train_batch(gen(0))
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    flat = b.x.flatten(1)
    for row, task in enumerate(batch.task_ids.tolist()):
        table = torch.tensor(DIGIT_TASKS[task][1])
        for img, lab in zip(x[row], y[row]):
            match = (flat == img.flatten()).all(1).nonzero().squeeze(1)
            assert table[b.digit[match]].eq(lab).all()
    assert b.info.output_dim == 10 and y.max() < 10


def test_digits_held_out_tasks_are_new_labelings_on_test_images():
    b = make("digits_mtl")
    trained = {tuple(lab) for _, lab in DIGIT_TASKS}
    for lab in b.held_out_labelings.tolist():
        assert tuple(lab) not in trained and tuple(1 - v for v in lab) not in trained and sum(lab) == 5
    assert len(b.held_out_labelings) == 126 - 2
    ev = b.eval_batch(gen(0), 3)
    assert ev.support_y.max() == 1 and ev.support_x.shape[1] == 2 * b.config.shots
    train_imgs = b.x[b.train_idx].flatten(1)
    q = ev.query_x.reshape(-1, 64)
    assert not any((train_imgs == img).all(1).any() for img in q[:20])


def test_glyphs_mtl_tasks_own_disjoint_classes_and_held_out_tasks_never_overlap():
    b = make("glyphs_mtl")
    cls = b.task_classes
    assert cls.unique().numel() == cls.numel()  # no class in two tasks
    batch = b.train_batch(gen(0))
    # label j of task t is always the same class: its images are instances of that class
    pool = b.pools["train"]
    c = b.config
    for row, task in enumerate(batch.task_ids.tolist()):
        for j in range(c.ways):
            start = int(pool.offsets[cls[task, j]])
            own = pool.images[start: start + c.train_instances].float().div(255).flatten(1)
            imgs = batch.support_x[row][batch.support_y[row] == j].flatten(1)
            assert all((own == im).all(1).any() for im in imgs)
    ev = b.eval_batch(gen(1), 4)
    train_imgs = pool.images[torch.cat([pool.offsets[k] + torch.arange(c.instances) for k in cls.reshape(-1)])]
    train_imgs = train_imgs.float().div(255).flatten(1)
    assert not any((train_imgs == im).all(1).any() for im in ev.query_x.flatten(0, 1).flatten(1))
    # the trained tasks' test instances are the held-out instances of the same classes
    test = b.train_tasks_batch(gen(0))
    assert test.query_x.shape[1] == c.ways * (c.instances - c.train_instances)


def test_meta_batch_cannot_exceed_tasks():
    spec = plugins.get_registry().get("benchmark", "relatedness")
    with pytest.raises(ValueError, match="meta_batch"):
        spec.config(num_tasks=2, meta_batch=3)
    assert math.isfinite(make("relatedness").train_batch(gen(0)).support_y.sum().item())
