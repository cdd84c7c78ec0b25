"""Omniglot and miniImageNet read from fixture folders in their real layouts; a missing folder,
a wrong layout or an unreadable image is a DataError naming the path and the layout."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from metareg.errors import DataError
from metareg.tasks.folders import MiniImageNet, MiniImageNetConfig, Omniglot, OmniglotConfig


def _omniglot(root, alphabets=2, chars=3, drawings=4, size=40):
    for folder in ("images_background", "images_evaluation"):
        for a in range(alphabets):
            for c in range(chars):
                d = root / "omniglot" / folder / f"{folder[7:10]}_alpha{a}" / f"character{c + 1:02d}"
                d.mkdir(parents=True)
                for i in range(drawings):
                    im = Image.new("L", (size, size), 255)  # Omniglot: black strokes on white
                    ImageDraw.Draw(im).line([(5 + 3 * c, 5), (30, 8 + 5 * a + i)], fill=0, width=3)
                    im.save(d / f"{c:04d}_{i:02d}.png")
    return root


def test_omniglot_lake_and_vinyals_splits(tmp_path):
    _omniglot(tmp_path, alphabets=4)
    lake = Omniglot(OmniglotConfig(data_dir=str(tmp_path), split="lake", ways=2, shots=1, query=2, meta_batch=3))
    assert lake.info.input_shape == (1, 28, 28)
    tr, te = set(lake.pools["train"].class_names), set(lake.pools["test"].class_names)
    assert all(n.startswith("images_background") for n in tr) and all(n.startswith("images_evaluation") for n in te)
    assert lake.pools["test"].num_classes == 4 * 12  # rotations are classes
    b = lake.train_batch(torch.Generator().manual_seed(0))
    assert b.support_x.shape == (3, 2, 1, 28, 28)
    assert b.support_x.mean() < 0.5, "ink is 1 on a 0 background after inversion"

    vin = Omniglot(OmniglotConfig(data_dir=str(tmp_path), ways=2, shots=1, query=1, rotations=False))
    names = [set(p.class_names) for p in vin.pools.values()]
    assert [len(n) for n in names] == [15, 3, 6] and not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert vin.pools["train"].num_classes == len(names[0])


def test_omniglot_from_environment_variable(tmp_path, monkeypatch):
    _omniglot(tmp_path)
    monkeypatch.setenv("METAREG_DATA", str(tmp_path))
    bench = Omniglot(OmniglotConfig(ways=2, shots=1, query=1, split="lake"))
    assert bench.eval_batch(torch.Generator().manual_seed(0), 2).query_x.shape == (2, 2, 1, 28, 28)


def test_omniglot_errors_name_the_path_and_layout(tmp_path, monkeypatch):
    monkeypatch.delenv("METAREG_DATA", raising=False)
    with pytest.raises(DataError, match="METAREG_DATA"):
        Omniglot(OmniglotConfig())
    with pytest.raises(DataError, match="does not exist"):
        Omniglot(OmniglotConfig(data_dir=str(tmp_path / "nope")))
    (tmp_path / "images_background").mkdir()
    with pytest.raises(DataError, match=r"images_evaluation is missing; expected images_background/<alphabet>"):
        Omniglot(OmniglotConfig(data_dir=str(tmp_path)))
    (tmp_path / "images_evaluation").mkdir()
    with pytest.raises(DataError, match=r"images_background holds no <alphabet>/<character>/ folders"):
        Omniglot(OmniglotConfig(data_dir=str(tmp_path)))
    root = _omniglot(tmp_path / "bad")
    victim = next((root / "omniglot" / "images_evaluation").rglob("*.png"))
    victim.write_bytes(b"not a png")
    with pytest.raises(DataError, match=victim.name):
        Omniglot(OmniglotConfig(data_dir=str(root), ways=2, shots=1, query=1, split="lake"))


def _mini(root, classes=(("train", 3), ("val", 2), ("test", 2)), per_class=4):
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in classes:
        lines = ["filename,label"]
        for c in range(n):
            label = f"n{split}{c:05d}"
            for i in range(per_class):
                name = f"{label}{i:08d}.jpg"
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(images / name)
                lines.append(f"{name},{label}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def test_miniimagenet_reads_the_ravi_larochelle_layout(tmp_path):
    _mini(tmp_path / "miniimagenet")
    bench = MiniImageNet(MiniImageNetConfig(data_dir=str(tmp_path), size=16, ways=2, shots=1, query=2, meta_batch=2))
    assert bench.info.input_shape == (3, 16, 16)
    assert {k: p.num_classes for k, p in bench.pools.items()} == {"train": 3, "val": 2, "test": 2}
    b = bench.eval_batch(torch.Generator().manual_seed(0), 2, "val")
    assert b.query_x.shape == (2, 4, 3, 16, 16) and 0 <= b.query_x.min() and b.query_x.max() <= 1


@pytest.mark.parametrize("damage,match", [
    (lambda r: (r / "val.csv").unlink(), "val.csv is missing"),
    (lambda r: (r / "test.csv").write_text("file,class\na.jpg,x\n"), "header 'filename,label'"),
    (lambda r: next((r / "images").glob("ntest*")).unlink(), "does not exist"),
    (lambda r: (r / "test.csv").write_text((r / "test.csv").read_text() + "ntrain0000000000000.jpg,ntrain00000\n"),
     "both"),
    (lambda r: next((r / "images").glob("nval*")).write_bytes(b"\x00garbage"), "cannot read image"),
])
def test_miniimagenet_errors(tmp_path, damage, match):
    root = _mini(tmp_path)
    damage(root)
    with pytest.raises(DataError, match=match):
        MiniImageNet(MiniImageNetConfig(data_dir=str(root), size=16, ways=2, shots=1, query=1))


def _png_header_only(path, width, height):
    """A PNG whose header declares width x height and whose pixel data never comes: what a
    decompression bomb looks like to a reader that trusts the header."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    body = zlib.compress(b"\x00" * 64)  # far less than the header promises
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [12_000, 100_000])  # PIL warns at the first size, raises at the second
def test_a_decompression_bomb_is_a_data_error_naming_the_file(tmp_path, side):
    root = _omniglot(tmp_path)
    victim = next((root / "omniglot" / "images_background").rglob("*.png"))
    _png_header_only(victim, side, side)
    with pytest.raises(DataError, match=rf"{victim.name}.*{side}x{side}|{victim.name}.*too large"):
        Omniglot(OmniglotConfig(data_dir=str(root), ways=2, shots=1, query=1, split="lake"))


def test_a_truncated_image_is_a_data_error_naming_the_file(tmp_path):
    root = _mini(tmp_path)
    victim = next((root / "images").glob("ntrain*"))
    victim.write_bytes(victim.read_bytes()[:40])  # a JPEG cut short after its header
    with pytest.raises(DataError, match=victim.name):
        MiniImageNet(MiniImageNetConfig(data_dir=str(root), size=16, ways=2, shots=1, query=1))
