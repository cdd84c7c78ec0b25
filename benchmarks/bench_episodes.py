"""Drawing episodes beside the training step they feed (issue 4: "fast enough that sampling is
never the bottleneck; measure it beside a training step").

Each case draws one meta-batch of N-way K-shot Q-query episodes the way `metareg run` does
(`ClassPool.sample`: classes, instances, label permutation and Omniglot's rotations for all tasks
at once) and times it beside one outer step of a learner on that batch (Conv4, Adam included).
In the printed table the "ratio" of a step row is step time / sampling time: how many meta-batches
could be drawn in the time one is trained on (above ~20, sampling is under 5% of a run).  Every
`metareg run` also reports the share it measured (`sample_share` in summary.json).

Cases: the embedded glyphs (5-way 1-shot 15-query, meta-batch 32); the Omniglot layout (964
classes x 20 instances, rotations as new classes); miniImageNet's size (3 x 84 x 84, 64 classes,
5-way 1-shot 15-query, meta-batch 4), on synthetic uint8 pools of the same shapes as the real
data (nothing is downloaded).
"""

from __future__ import annotations

import os

import pytest
import torch

from metareg.learners import LearnerContext
from metareg.nets.conv import conv4
from metareg.plugins import get_registry
from metareg.tasks import TaskInfo
from metareg.tasks.episodes import ClassPool, sample_episodes

ROUNDS_SCALE = float(os.environ.get("METAREG_BENCH_ROUNDS", "1"))
WAYS, SHOTS, QUERY = 5, 1, 15


def _rounds(n: int) -> int:
    return max(2, round(n * ROUNDS_SCALE))


def _glyphs_pool() -> ClassPool:
    spec = get_registry().get("benchmark", "glyphs")
    bench = spec.factory(spec.config())  # generated once and cached on disk
    return bench.pools["train"]


def _synthetic_pool(classes: int, per_class: int, shape: tuple[int, int, int], rotations: int = 1) -> ClassPool:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes * per_class, *shape), generator=g, dtype=torch.uint8)
    return ClassPool(images, [per_class] * classes, rotations=rotations)


# case -> (pool factory, input shape, meta-batch, learners timed beside the sampling)
CASES = {
    "glyphs 5w1s15q T=32": (_glyphs_pool, (1, 28, 28), 32, ("maml", "protonet")),
    "omniglot layout, rotations, 5w1s15q T=32": (lambda: _synthetic_pool(964, 20, (1, 28, 28), 4), (1, 28, 28), 32,
                                                 ("protonet",)),
    "miniimagenet size 84x84x3, 5w1s15q T=4": (lambda: _synthetic_pool(64, 100, (3, 84, 84)), (3, 84, 84), 4,
                                               ("protonet",)),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    make_pool, shape, t, learners = CASES[request.param]
    return request.param, make_pool(), shape, t, learners


def _group(name: str) -> str:
    return f"episodes: {name} (ratio = step / sampling)"


def test_sampling(benchmark, case):
    name, pool, _, t, _ = case
    gen = torch.Generator().manual_seed(0)
    benchmark.group = _group(name)
    benchmark.extra_info.update(role="metareg", label="draw one meta-batch (ClassPool.sample)")
    batch = benchmark.pedantic(lambda: sample_episodes(pool, gen, t, WAYS, SHOTS, QUERY), rounds=_rounds(20),
                               iterations=1, warmup_rounds=1)
    assert batch.support_x.shape[:2] == (t, WAYS * SHOTS) and batch.query_x.shape[:2] == (t, WAYS * QUERY)


@pytest.mark.parametrize("learner", ["maml", "protonet"])
def test_training_step(benchmark, case, learner):
    name, pool, shape, t, learners = case
    if learner not in learners:
        pytest.skip(f"{learner} is not timed on {name}")
    spec = get_registry().get("algorithm", learner)
    info = TaskInfo(input_shape=shape, output_dim=WAYS, loss="cross_entropy", metric="accuracy")
    ctx = LearnerContext(task=info, make_backbone=lambda name=None: conv4(shape, WAYS),
                         generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    model = spec.factory(spec.config(**({"inner_lr": 0.4} if learner == "maml" else {})), ctx)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = sample_episodes(pool, torch.Generator().manual_seed(1), t, WAYS, SHOTS, QUERY)

    def step():
        opt.zero_grad(set_to_none=True)
        model.step(batch)
        opt.step()

    benchmark.group = _group(name)
    benchmark.extra_info.update(role="baseline", label=f"one {learner} outer step (Conv4, Adam)")
    benchmark.pedantic(step, rounds=_rounds(3), iterations=1, warmup_rounds=1)
