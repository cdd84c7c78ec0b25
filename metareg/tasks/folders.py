"""Real few-shot datasets read from a folder: Omniglot and miniImageNet.

Nothing is downloaded: point ``data_dir`` (``--set data_dir=...``) or the ``METAREG_DATA``
environment variable at a folder holding the dataset in its usual layout (the benchmark looks in
``<data_dir>/omniglot`` and ``<data_dir>/miniimagenet`` first, then in ``<data_dir>`` itself).
Every image is decoded once when the benchmark is built and kept as one uint8 tensor, so episodes
are sampled by indexing, as for the embedded datasets.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import config, param
from ..errors import DataError
from .episodes import ClassPool, EpisodeConfig, EpisodicImages

__all__ = ["OmniglotConfig", "Omniglot", "MiniImageNetConfig", "MiniImageNet", "OMNIGLOT_LAYOUT", "MINIIMAGENET_LAYOUT"]

OMNIGLOT_LAYOUT = ("images_background/<alphabet>/<character>/*.png and images_evaluation/<alphabet>/<character>/*.png "
                   "(the unzipped images_background.zip and images_evaluation.zip of brendenlake/omniglot)")
MINIIMAGENET_LAYOUT = ("train.csv, val.csv and test.csv (Ravi & Larochelle's split; header 'filename,label') beside an "
                       "images/ folder holding every file the CSVs name")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def _root(data_dir: str, sub: str, layout: str, name: str) -> Path:
    base = data_dir or os.environ.get("METAREG_DATA", "")
    if not base:
        raise DataError(f"{name} reads its images from a folder: set data_dir (--set data_dir=/path) or METAREG_DATA "
                        f"to a folder holding {layout}.")
    base_p = Path(base).expanduser()
    if not base_p.is_dir():
        raise DataError(f"{name}: data folder {base_p} does not exist; it should hold {layout}.")
    return base_p / sub if (base_p / sub).is_dir() else base_p


def _read_image(path: Path, mode: str, size: int, layout: str) -> np.ndarray:
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # PIL warns between MAX_IMAGE_PIXELS and twice that and raises above; both are refused
            # below, before anything is decoded (the header alone gives the size)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im_file = Image.open(path)
        with im_file as im:
            w, h = im.size
            limit = Image.MAX_IMAGE_PIXELS
            if limit and w * h > limit:
                raise DataError(f"image {path} declares {w}x{h} pixels, more than the {limit} that metareg decodes (a "
                                f"decompression bomb, or not a few-shot image); remove it or shrink it. Expected "
                                f"{layout}.")
            im = im.convert(mode)
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.LANCZOS)
            return np.asarray(im, np.uint8)
    except Image.DecompressionBombError as e:
        raise DataError(f"image {path} is too large to decode ({e}); remove it or shrink it.") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(f"cannot read image {path} ({e}); expected a readable image in the layout {layout}.") from None


def _decode_all(paths: Sequence[Path], read: Callable[[Path], np.ndarray], desc: str) -> np.ndarray:
    from tqdm.auto import tqdm

    first = read(paths[0])
    out = np.empty((len(paths), *first.shape), np.uint8)
    out[0] = first
    for i, p in enumerate(tqdm(paths[1:], desc=desc, unit="img", leave=False, disable=len(paths) < 2000), 1):
        out[i] = read(p)
    return out


# -- Omniglot ---------------------------------------------------------------------------------
@config
class OmniglotConfig(EpisodeConfig):
    data_dir: str = param("", "folder with images_background/ and images_evaluation/ (empty: $METAREG_DATA[/omniglot])")
    split: str = param("vinyals", "'vinyals': 1,200 characters (1,028 train + 172 val) / 423 test drawn from both "
                       "folders, rotations as new classes; 'lake': background alphabets train, evaluation test")
    rotations: bool = param(True, "add rotations by 90/180/270 degrees as new classes (Vinyals et al. 2016)")
    size: int = param(28, "images are resized to size x size", ge=8)
    split_seed: int = param(0, "seed of the fixed character shuffle of the vinyals split")

    def __post_init__(self) -> None:
        from ..errors import ConfigError

        if self.split not in ("vinyals", "lake"):
            raise ConfigError(f"omniglot split must be 'vinyals' or 'lake', got {self.split!r}.")


def _omniglot_characters(root: Path, folder: str) -> list[tuple[str, list[Path]]]:
    d = root / folder
    if not d.is_dir():
        raise DataError(f"omniglot: {d} is missing; expected {OMNIGLOT_LAYOUT} under {root}.")
    chars = []
    for alphabet in sorted(p for p in d.iterdir() if p.is_dir()):
        for char in sorted(p for p in alphabet.iterdir() if p.is_dir()):
            files = sorted(f for f in char.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataError(f"omniglot: character folder {char} holds no images; expected {OMNIGLOT_LAYOUT}.")
            chars.append((f"{folder}/{alphabet.name}/{char.name}", files))
    if not chars:
        raise DataError(f"omniglot: {d} holds no <alphabet>/<character>/ folders; expected {OMNIGLOT_LAYOUT}.")
    return chars


class Omniglot(EpisodicImages):
    """Lake et al. (2015) Omniglot.  The ``vinyals`` split follows Vinyals et al. (2016): 1,200
    characters for training (here 1,028 train + 172 validation, Ravi & Larochelle's sizes) and the
    remaining 423 for testing, every rotation a new class.  The original character lists are not
    distributed with the dataset, so the 1,623 characters are shuffled with a fixed seed instead:
    the sizes match published protocols, the exact members do not.  On a folder with fewer
    characters the same fractions are used."""

    def __init__(self, config: OmniglotConfig) -> None:
        super().__init__(config)
        root = _root(config.data_dir, "omniglot", OMNIGLOT_LAYOUT, "omniglot")
        for folder in ("images_background", "images_evaluation"):  # both, before decoding anything
            if not (root / folder).is_dir():
                raise DataError(f"omniglot: {root / folder} is missing; expected {OMNIGLOT_LAYOUT} under {root}.")
        background = _omniglot_characters(root, "images_background")
        evaluation = _omniglot_characters(root, "images_evaluation")
        if config.split == "lake":
            n_val = max(1, round(len(background) * 0.15))
            g = torch.Generator().manual_seed(config.split_seed)
            order = torch.randperm(len(background), generator=g).tolist()
            splits = {"train": [background[i] for i in sorted(order[n_val:])],
                      "val": [background[i] for i in sorted(order[:n_val])], "test": evaluation}
        else:
            chars = background + evaluation
            g = torch.Generator().manual_seed(config.split_seed)
            order = torch.randperm(len(chars), generator=g).tolist()
            n_test = round(len(chars) * 423 / 1623)
            n_val = round(len(chars) * 172 / 1623)
            test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
            splits = {k: [chars[i] for i in sorted(v)] for k, v in (("train", train), ("val", val), ("test", test))}
        size = config.size
        # Omniglot PNGs are black strokes on white; inverted so ink = 1 as in glyphs and digits
        read = lambda p: 255 - _read_image(p, "L", size, OMNIGLOT_LAYOUT)  # noqa: E731
        self.pools = {}
        for split, chars in splits.items():
            if not chars:
                raise DataError(f"omniglot: the {split} split is empty; the folder {root} holds too few characters "
                                f"for the {config.split} split.")
            paths = [p for _, files in chars for p in files]
            images = torch.from_numpy(_decode_all(paths, read, f"omniglot {split}")).unsqueeze(1)
            self.pools[split] = ClassPool(images, [len(f) for _, f in chars], name=split,
                                          rotations=4 if config.rotations else 1, class_names=[c for c, _ in chars])
        self._finish((1, size, size))


# -- miniImageNet ----------------------------------------------------------------------------
@config
class MiniImageNetConfig(EpisodeConfig):
    data_dir: str = param("", "folder with train.csv, val.csv, test.csv and images/ (empty: $METAREG_DATA[/miniimagenet])")
    size: int = param(84, "images are resized to size x size RGB", ge=8)


def _read_csv(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise DataError(f"miniimagenet: {path} is missing; expected {MINIIMAGENET_LAYOUT}.")
    try:
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header[:2]] != ["filename", "label"]:
                raise DataError(f"miniimagenet: {path} must start with the header 'filename,label', found {header}; "
                                f"expected {MINIIMAGENET_LAYOUT}.")
            rows = []
            for lineno, row in enumerate(reader, 2):
                if not row:
                    continue
                if len(row) < 2:
                    raise DataError(f"miniimagenet: {path} line {lineno} has {len(row)} column(s), expected filename,label.")
                rows.append((row[0].strip(), row[1].strip()))
    except UnicodeDecodeError as e:
        raise DataError(f"miniimagenet: {path} is not a text CSV ({e}); expected {MINIIMAGENET_LAYOUT}.") from None
    if not rows:
        raise DataError(f"miniimagenet: {path} lists no images; expected {MINIIMAGENET_LAYOUT}.")
    return rows


class MiniImageNet(EpisodicImages):
    """Vinyals et al. (2016) miniImageNet with Ravi & Larochelle's (2017) class split: 64 training,
    16 validation and 20 test classes of 600 84x84 RGB images each."""

    def __init__(self, config: MiniImageNetConfig) -> None:
        super().__init__(config)
        root = _root(config.data_dir, "miniimagenet", MINIIMAGENET_LAYOUT, "miniimagenet")
        images_dir = root / "images"
        if not images_dir.is_dir():
            raise DataError(f"miniimagenet: {images_dir} is missing; expected {MINIIMAGENET_LAYOUT} in {root}.")
        size = config.size
        read = lambda p: _read_image(p, "RGB", size, MINIIMAGENET_LAYOUT)  # noqa: E731
        self.pools = {}
        seen: dict[str, str] = {}
        for split, csv_name in (("train", "train.csv"), ("val", "val.csv"), ("test", "test.csv")):
            rows = _read_csv(root / csv_name)
            by_label: dict[str, list[Path]] = {}
            for fname, label in rows:
                if seen.setdefault(label, split) != split:
                    raise DataError(f"miniimagenet: class {label} appears in both {seen[label]}.csv and {csv_name}; "
                                    "the splits must not share classes.")
                by_label.setdefault(label, []).append(images_dir / fname)
            for paths in by_label.values():
                for p in paths:
                    if not p.is_file():
                        raise DataError(f"miniimagenet: {csv_name} names {p.name}, but {p} does not exist; "
                                        f"expected {MINIIMAGENET_LAYOUT}.")
            labels = sorted(by_label)
            paths = [p for lab in labels for p in by_label[lab]]
            arr = _decode_all(paths, read, f"miniimagenet {split}")  # [M, H, W, 3]
            images = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
            self.pools[split] = ClassPool(images, [len(by_label[lab]) for lab in labels], name=split, class_names=labels)
        self._finish((3, size, size))
