"""examples/glyphs_to_omniglot.py writes a folder the omniglot benchmark reads, image for image."""

import importlib.util
from pathlib import Path

import numpy as np
import torch

from metareg.tasks.folders import Omniglot, OmniglotConfig
from metareg.tasks.glyphs import EVALUATION_GROUPS, GlyphSet

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "glyphs_to_omniglot.py"


def test_export_is_read_back_by_the_omniglot_loader(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("glyphs_to_omniglot", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # a tiny glyph set: 14 background + 2 evaluation classes of 3 instances, distinct blocks of ink
    rng = np.random.default_rng(0)
    images = np.zeros((16, 3, 28, 28), np.uint8)
    for c in range(16):
        images[c, :, 2 + c: 8 + c, 6:20] = 255
        images[c] = np.maximum(images[c], rng.integers(0, 40, (3, 28, 28), dtype=np.uint8))
    names = ("latin", EVALUATION_GROUPS[0])
    gs = GlyphSet(images, np.arange(0x41, 0x51), np.array([0] * 14 + [1, 1]), names)
    monkeypatch.setattr(mod, "load_glyphs", lambda cfg: gs)
    assert mod.export(tmp_path) == 48
    assert len(list((tmp_path / "images_background" / "latin").glob("*/*.png"))) == 42
    assert not list(tmp_path.rglob("*.tmp"))

    bench = Omniglot(OmniglotConfig(data_dir=str(tmp_path), split="lake", rotations=False, ways=2, shots=1, query=1))
    test = bench.pools["test"]
    assert test.num_classes == 2
    # round trip 28 -> 105 -> 28 and ink inversion: the images come back close to the originals
    back = test.images.float().squeeze(1) / 255
    want = torch.from_numpy(images[14:].reshape(-1, 28, 28)).float() / 255
    assert (back - want).abs().mean() < 0.05
