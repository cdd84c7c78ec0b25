"""The embedded glyphs dataset: enough distinct classes and groups, real glyphs only, fixed
group splits that never share a class, deterministic generation, a cache that is reused, and a
corrupt or stale cache that is rebuilt."""

import numpy as np
import pytest
import torch

from metareg.tasks import glyphs as G
from metareg.tasks.glyphs import Glyphs, GlyphsConfig


def test_default_selection_has_enough_distinct_classes_in_enough_groups():
    cps, gids, names = G._select_classes(GlyphsConfig().max_per_group)
    assert len(cps) >= 1000 and len(set(cps)) == len(cps)
    assert len(set(gids)) >= 20
    held = {names[g] for g in gids if names[g] in G.EVALUATION_GROUPS + G.VALIDATION_GROUPS}
    assert set(G.EVALUATION_GROUPS) <= held and set(G.VALIDATION_GROUPS) <= held
    assert not set(G.EVALUATION_GROUPS) & set(G.VALIDATION_GROUPS)
    # every class is a real glyph of the font: none renders as the missing-glyph box
    notdef = G._render(0xE000, G.FACES[0])  # private use: DejaVu maps nothing there
    assert notdef.sum() > 0
    some = [cps[i] for i in range(0, len(cps), 7)]
    assert all(not np.array_equal(G._render(cp, G.FACES[0]), notdef) for cp in some)
    assert all(cp in G._cmap(G.FACES[0]) for cp in cps)


def test_no_two_classes_look_alike():
    cps, _, _ = G._select_classes(GlyphsConfig().max_per_group)
    r = torch.from_numpy(np.stack([G._render(cp, G.FACES[0]) for cp in cps])).unsqueeze(1)
    v = torch.nn.functional.normalize(torch.nn.functional.avg_pool2d(torch.nn.functional.avg_pool2d(r, 3, 1, 1), 4).flatten(1), dim=1)
    sim = v @ v.T
    sim.fill_diagonal_(0)
    assert sim.max() < G.DUPLICATE_COSINE


def test_small_config_episodes_and_splits(small_glyphs):
    bench = Glyphs(GlyphsConfig(**small_glyphs))
    assert bench.info.input_shape == (1, 28, 28) and bench.info.output_dim == 5
    assert bench.info.default_backbone == "conv4" and bench.info.loss == "cross_entropy"
    names = {k: set(p.class_names) for k, p in bench.pools.items()}
    assert not names["train"] & names["val"] and not names["train"] & names["test"] and not names["val"] & names["test"]
    group = lambda s: {n.split("/")[0] for n in s}  # noqa: E731
    assert group(names["test"]) <= set(G.EVALUATION_GROUPS)
    assert group(names["val"]) <= set(G.VALIDATION_GROUPS)
    b = bench.train_batch(torch.Generator().manual_seed(0))
    assert b.support_x.shape == (2, 5, 1, 28, 28) and b.query_x.shape == (2, 10, 1, 28, 28)
    assert 0 <= b.support_x.min() and b.support_x.max() <= 1 and b.support_x.mean() > 0.02
    e = bench.eval_batch(torch.Generator().manual_seed(0), 3, "test")
    assert e.query_x.shape == (3, 10, 1, 28, 28)
    # the test split's images are the evaluation groups' images, nothing else
    test_imgs = bench.pools["test"].images.float().div(255).flatten(1)
    hits = (e.query_x.flatten(2).unsqueeze(2) == test_imgs.view(1, 1, *test_imgs.shape)).all(-1).any(-1)
    assert hits.all()


def test_instances_differ_and_generation_is_deterministic():
    a = G.generate_glyphs(4, 2, seed=5, progress=False)
    b = G.generate_glyphs(4, 2, seed=5, progress=False)
    assert np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images[:, 0], a.images[:, 1]), "instances of a class are perturbed copies"
    c = G.generate_glyphs(4, 2, seed=6, progress=False)
    assert not np.array_equal(a.images, c.images)


def test_cache_is_reused_and_rebuilt_when_corrupt(tmp_path, monkeypatch):
    cfg = GlyphsConfig(max_per_group=2, instances=3, query=1, cache_dir=str(tmp_path))
    first = G.load_glyphs(cfg)
    path = G.cache_path(cfg)
    assert path.is_file() and not list(tmp_path.glob("*.tmp"))

    calls = []
    real = G.generate_glyphs
    monkeypatch.setattr(G, "generate_glyphs", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = G.load_glyphs(cfg)
    assert calls == [] and np.array_equal(again.images, first.images)

    path.write_bytes(path.read_bytes()[:1000])  # a truncated file, as a killed copy would leave
    rebuilt = G.load_glyphs(cfg)
    assert calls == [1] and np.array_equal(rebuilt.images, first.images)

    # same container, tampered content: the checksum catches it
    with np.load(path) as z:
        parts = dict(z)
    parts["images"] = parts["images"].copy()
    parts["images"][0, 0, 0, 0] ^= 1
    np.savez_compressed(path, **parts)
    assert np.array_equal(G.load_glyphs(cfg).images, first.images) and calls == [1, 1]


def test_cache_location_follows_config_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("METAREG_CACHE", str(tmp_path / "env"))
    assert G.cache_path(GlyphsConfig()) == tmp_path / "env" / "glyphs-v1.npz"
    assert G.cache_path(GlyphsConfig(cache_dir=str(tmp_path / "cfg"))).parent == tmp_path / "cfg"
    assert G.cache_path(GlyphsConfig(instances=5, cache_dir=str(tmp_path))).name != "glyphs-v1.npz"


@pytest.mark.slow
def test_full_default_generation_is_fast_and_large(tmp_path):
    import time

    t0 = time.perf_counter()
    bench = Glyphs(GlyphsConfig(cache_dir=str(tmp_path)))
    elapsed = time.perf_counter() - t0
    total = sum(p.num_classes for p in bench.pools.values())
    assert total >= 1000 and bench.glyphs.images.shape[1] >= 20
    assert elapsed < 60, f"generation took {elapsed:.1f}s"


def test_run_resolves_glyph_keys_without_ambiguity(small_glyphs):
    from metareg.runner import Run

    run = Run("maml", "glyphs", {**small_glyphs, "seed": 3, "generation_seed": 0})
    assert run.config.seed == 3 and run.bench_config.max_per_group == small_glyphs["max_per_group"]
