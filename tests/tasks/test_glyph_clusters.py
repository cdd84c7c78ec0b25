"""glyph_clusters: training scripts dealt into K clusters, each seen through its own pixel permutation."""

import pytest
import torch

from metareg.errors import ConfigError
from metareg.tasks.glyph_clusters import GlyphClusters, GlyphClustersConfig


@pytest.fixture
def bench(small_glyphs):
    return GlyphClusters(GlyphClustersConfig(**{**small_glyphs, "meta_batch": 12, "clusters": 3, "ways": 2}))


def test_clusters_partition_the_training_scripts(bench):
    seen = [g for _, groups in bench.describe_clusters() for g in groups]
    assert len(seen) == len(set(seen)) == len({n.split("/")[0] for n in bench.pools["train"].class_names})
    assert sum(n for n, _ in bench.describe_clusters()) == bench.pools["train"].num_classes
    assert bench.info.num_train_tasks == 3
    assert torch.equal(bench.permutations[0], torch.arange(28 * 28))  # cluster 0 is seen as drawn
    for p in bench.permutations[1:]:
        assert torch.equal(p.sort().values, torch.arange(28 * 28)) and not torch.equal(p, torch.arange(28 * 28))


def test_episodes_come_from_one_cluster_through_its_permutation(bench):
    b = bench.train_batch(torch.Generator().manual_seed(1))
    c = bench.config
    assert b.support_x.shape == (12, c.ways * c.shots, 1, 28, 28) and b.query_x.shape[1] == c.ways * c.query
    assert b.task_ids is not None and b.task_ids.shape == (12,)
    pool = bench.pools["train"]
    flat = pool.images.float().div(255).flatten(1)  # [M, H*W], every instance of every class
    cls_of_row = torch.repeat_interleave(torch.arange(pool.num_classes), pool.counts)
    for t in range(12):
        k = int(b.task_ids[t])
        inverse = bench.permutations[k].argsort()
        images = torch.cat([b.support_x[t], b.query_x[t]]).flatten(1)[:, inverse]  # undo the permutation
        labels = torch.cat([b.support_y[t], b.query_y[t]])
        for img, lab in zip(images, labels):
            match = (flat - img).abs().amax(1) < 1e-6
            assert match.any(), "every image is a training instance seen through its cluster's permutation"
            cls = int(cls_of_row[match.nonzero()[0, 0]])
            assert cls in set(bench.cluster_classes[k].tolist())
        # one class per label within the episode
        assert len(set(labels.tolist())) == c.ways


def test_held_out_episodes_have_no_training_task_id_and_are_deterministic(bench):
    a = bench.eval_batch(torch.Generator().manual_seed(3), 5)
    b = bench.eval_batch(torch.Generator().manual_seed(3), 5)
    assert a.task_ids is None and a.num_tasks == 5
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)


def test_too_many_clusters_is_refused(small_glyphs):
    with pytest.raises(ConfigError):
        GlyphClusters(GlyphClustersConfig(**{**small_glyphs, "clusters": 18, "ways": 5}))
