"""``task_parallel``: on CPU, a gradient meta-learner runs the backbone's chunks of tasks one by
one, each chunk's ops on one thread, on two workers per thread of the run
(``metareg.machine.in_order``, ``task_workers``).

The meta-gradient must be the whole meta-batch's (float64, every MAML-family learner on Conv4),
the same bits for any thread count, and the chunks must really run on the workers, each
single-threaded, without changing the caller's thread setting.
"""

import threading

import pytest
import torch

from metareg import machine
from metareg.learners import LearnerContext, meta
from metareg.nets.conv import conv4
from metareg.plugins import get_registry
from metareg.tasks import TaskBatch, TaskInfo
from thread_counts import at_thread_counts

SHAPE, WAYS, T = (1, 16, 16), 3, 5


def _batch(dtype):
    g = torch.Generator().manual_seed(5)
    return TaskBatch(torch.randn(T, 3, *SHAPE, generator=g, dtype=dtype), torch.randint(0, WAYS, (T, 3), generator=g),
                     torch.randn(T, 6, *SHAPE, generator=g, dtype=dtype), torch.randint(0, WAYS, (T, 6), generator=g))


def _learner(algo, dtype, per_chunk=2, **over):
    net = conv4(SHAPE, WAYS, width=16)
    # chunks of `per_chunk` tasks: the largest activation of one task is [6, 16, 16, 16]
    net.cpu_chunk_bytes = per_chunk * 6 * 16 * 16 * 16 * torch.finfo(dtype).bits // 8
    info = TaskInfo(input_shape=SHAPE, output_dim=WAYS, loss="cross_entropy", metric="accuracy")
    ctx = LearnerContext(task=info, make_backbone=lambda name=None: net, generator=torch.Generator().manual_seed(2),
                         dtype=dtype)
    spec = get_registry().get("algorithm", algo)
    if spec.family == "optimization":
        over = {"inner_lr": 0.3, "inner_steps": 2, **over}
    return spec.factory(spec.config(**over), ctx)


def _step(learner, batch):
    out = learner.step(batch)
    return out["loss"], [p.grad.clone() for p in learner.parameters() if p.grad is not None]


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("algo,over", [("maml", {}), ("fomaml", {}), ("anil", {}), ("meta_sgd", {}),
                                       ("maml", {"recompute": True}), ("imaml", {}), ("reptile", {})],
                         ids=["maml", "fomaml", "anil", "meta_sgd", "maml_recompute", "imaml", "reptile"])
def test_parallel_chunks_give_the_whole_meta_batch_gradient(algo, over, two_threads, monkeypatch):
    seen = []  # (thread name, its intra-op threads) of every chunk's forward
    real = meta.GradientMetaLearner.losses

    def spy(self, *a, **k):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return real(self, *a, **k)

    monkeypatch.setattr(meta.GradientMetaLearner, "losses", spy)
    batch = _batch(torch.float64)
    whole = _learner(algo, torch.float64, task_parallel=False, **over)
    assert whole._parallel_chunk(batch) == 0
    want_loss, want = _step(whole, batch)
    assert whole.step_workers == 1
    seen.clear()
    parallel = _learner(algo, torch.float64, **over)
    assert parallel._parallel_chunk(batch) == 2
    loss, got = _step(parallel, batch)
    assert parallel.step_workers == 4
    assert len(want) == len(got) >= 1 and want[0].abs().max() > 1e-6
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    # 3 chunks (2 + 2 + 1 tasks), each on a worker that runs its ops on one thread (losses: the
    # query loss, and the support losses where autograd takes the inner gradient, recomputed in
    # the backward with recompute)
    assert len(seen) >= 3 and all(name.startswith("metareg-task") and n == 1 for name, n in seen), seen
    assert torch.get_num_threads() == 2  # the caller's setting is untouched


def test_chunks_have_the_same_bits_for_any_thread_count():
    # 1 thread: the chunks one by one on the caller's thread; 2 and 3: on 4 and 6 workers
    batch = _batch(torch.float32)

    def step():
        learner = _learner("maml", torch.float32, per_chunk=1)
        result = _step(learner, batch)
        return learner.step_workers, result

    runs = at_thread_counts(step, counts=(1, 2, 3))
    assert [workers for workers, _ in runs] == [1, 4, 6]
    (l1, g1) = runs[0][1]
    for _, (loss, grads) in runs[1:]:
        assert loss == l1 and all(torch.equal(a, b) for a, b in zip(grads, g1))


def test_task_parallel_false_runs_the_whole_meta_batch(two_threads):
    batch = _batch(torch.float32)
    assert _learner("maml", torch.float32, task_parallel=False)._backbone_chunk(batch) == 0
    assert _learner("maml", torch.float32)._backbone_chunk(batch) == 2
    assert machine.task_workers(1) == 1 and machine.task_workers(2) == 4


def test_in_order_keeps_the_items_order_and_the_callers_threads():
    before = torch.get_num_threads()
    order = []

    def work(i):
        order.append(i)
        return i * i, threading.current_thread().name, torch.get_num_threads()

    out = list(machine.in_order(work, range(12), 3))
    assert [r[0] for r in out] == [i * i for i in range(12)]
    assert {r[2] for r in out} == {1} and all(r[1].startswith("metareg-task") for r in out)
    assert sorted(order) == list(range(12))
    assert torch.get_num_threads() == before
    # a thread started afterwards starts from the caller's setting, not the workers' one
    fresh = []
    t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    t.start(), t.join()
    assert fresh == [before]


def test_in_order_with_one_worker_computes_each_item_when_asked():
    done = []
    it = machine.in_order(lambda i: done.append(i) or i, range(3), 1)
    assert done == []
    assert next(it) == 0 and done == [0]
    assert list(it) == [1, 2] and done == [0, 1, 2]


def test_in_order_raises_the_first_error_and_starts_nothing_after_it():
    started = []
    gate = threading.Event()

    def work(i):
        started.append(i)
        if i == 1:
            raise ValueError("chunk 1 failed")
        if i >= 2:
            gate.wait(5)
        return i

    with pytest.raises(ValueError, match="chunk 1 failed"):
        for _ in machine.in_order(work, range(50), 2):
            pass
    gate.set()
    assert len(started) < 50  # the queued items were cancelled


@pytest.mark.parametrize("algo,over", [("protonet", {}), ("protonet", {"distance": "cosine"}),
                                       ("matching_net", {}), ("matching_net", {"fce": True}), ("relation_net", {})],
                         ids=["protonet", "protonet_cosine", "matching_net", "matching_net_fce", "relation_net"])
def test_metric_learners_in_chunks_give_the_whole_meta_batch_gradient(algo, over, two_threads):
    batch = _batch(torch.float64)
    results, workers = [], []
    for parallel in (False, True):
        # the embedding runs support and query together: 9 examples a task, chunks of 2 tasks
        torch.manual_seed(0)  # the full-context LSTMs start from torch's global generator
        learner = _learner(algo, torch.float64, per_chunk=3, task_parallel=parallel, **over)
        assert learner._parallel_chunk(batch) == (2 if parallel else 0)
        out = learner.step(batch)
        grads = [p.grad.clone() for p in learner.parameters() if p.grad is not None]
        results.append((out, grads)), workers.append(learner.step_workers)
    (want_out, want), (out, got) = results
    assert workers == [1, 4] and len(got) == len(want) >= 1 and want[0].abs().max() > 1e-6
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)
    assert out["loss"] == pytest.approx(want_out["loss"], rel=1e-12)
    assert out["accuracy"] == pytest.approx(want_out["accuracy"], abs=1e-12)

