"""Episode sampling: shapes and label layout, distinct classes and instances, determinism under a
generator, fresh label assignments per task, rotations as classes, uneven class sizes."""

import pytest
import torch

from metareg.errors import ConfigError
from metareg.tasks.episodes import ClassPool, sample_episodes


def _coded_pool(num_classes=12, per_class=7, counts=None):
    """Pixel (0, 0) holds the class, pixel (0, 1) the instance: every sampled image says where it came from."""
    counts = counts or [per_class] * num_classes
    imgs = []
    for c, n in enumerate(counts):
        for i in range(n):
            im = torch.zeros(1, 4, 4, dtype=torch.uint8)
            im[0, 0, 0], im[0, 0, 1] = c, i
            imgs.append(im)
    return ClassPool(torch.stack(imgs), counts, name="test")


def _ids(x):
    return (x[..., 0, 0, 0] * 255).round().long(), (x[..., 0, 0, 1] * 255).round().long()


def test_shapes_labels_and_distinctness():
    pool = _coded_pool()
    ways, shots, query, t = 5, 2, 3, 40
    b = sample_episodes(pool, torch.Generator().manual_seed(0), t, ways, shots, query)
    assert b.support_x.shape == (t, ways * shots, 1, 4, 4) and b.query_x.shape == (t, ways * query, 1, 4, 4)
    assert b.support_y.dtype == torch.long and b.support_x.dtype == torch.float32
    assert torch.equal(b.support_y[0], torch.arange(ways).repeat_interleave(shots))
    assert torch.equal(b.query_y[7], torch.arange(ways).repeat_interleave(query))
    sc, si = _ids(b.support_x)
    qc, qi = _ids(b.query_x)
    for k in range(t):
        cls_of_label = {}
        for c, y in zip(torch.cat([sc[k], qc[k]]).tolist(), torch.cat([b.support_y[k], b.query_y[k]]).tolist()):
            assert cls_of_label.setdefault(y, c) == c, "one label, one class within a task"
        assert len(set(cls_of_label.values())) == ways, "classes distinct within a task"
        for y in range(ways):
            inst = torch.cat([si[k][b.support_y[k] == y], qi[k][b.query_y[k] == y]])
            assert len(set(inst.tolist())) == shots + query, "support and query never share an image"


def test_deterministic_under_a_generator_and_labels_permuted():
    pool = _coded_pool()
    a = sample_episodes(pool, torch.Generator().manual_seed(3), 50, 5, 1, 2)
    b = sample_episodes(pool, torch.Generator().manual_seed(3), 50, 5, 1, 2)
    c = sample_episodes(pool, torch.Generator().manual_seed(4), 50, 5, 1, 2)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert not torch.equal(a.support_x, c.support_x)
    label0_class = _ids(a.support_x)[0][:, 0]
    assert len(set(label0_class.tolist())) >= 8, "label 0 should name a different class from task to task"


def test_rotations_are_new_classes():
    img = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    img[:, 0, 0, 0] = 255  # one lit corner: its position tells the rotation
    pool = ClassPool(img, [3], rotations=4)
    assert pool.num_classes == 4
    x = pool.sample(torch.Generator().manual_seed(0), 10, 4, 2)  # [T, 4 ways, 2, 1, 4, 4]
    corner = x.flatten(-3).argmax(-1)  # [T, ways, 2]
    assert (corner[..., 0] == corner[..., 1]).all(), "both images of a class share its rotation"
    for t in range(10):
        assert set(corner[t, :, 0].tolist()) == {0, 3, 12, 15}, "the four classes are the four rotations"


def test_uneven_class_sizes_stay_inside_their_class():
    counts = [3, 9, 4, 6, 3]
    pool = _coded_pool(counts=counts)
    x = pool.sample(torch.Generator().manual_seed(1), 200, 4, 3)
    cls, inst = _ids(x)
    assert (inst < torch.tensor(counts)[cls]).all()
    for t in range(200):
        for w in range(4):
            assert len(set(inst[t, w].tolist())) == 3


def test_impossible_episodes_are_config_errors():
    pool = _coded_pool(num_classes=4, per_class=3)
    with pytest.raises(ConfigError, match="only 4 classes"):
        pool.check(5, 2, "training episodes")
    with pytest.raises(ConfigError, match="only 3"):
        pool.check(2, 4, "training episodes")
