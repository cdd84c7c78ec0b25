"""``digits``: scikit-learn's 8x8 handwritten digits (UCI optdigits, 1,797 images) as episodes.

Ten classes are too few for Omniglot-style class splits, so the split is: digits 0-5 for training
(background), 6-9 for evaluation, hence ``ways`` defaults to 3 and may be at most 4.  Rotations
are not used to multiply the classes as Omniglot does: a 6 turned half a turn is a 9, and 0, 1 and
8 are nearly symmetric, so rotated "new" classes would duplicate each other and leak between
splits.  With four evaluation classes there is no room for a class-disjoint validation split;
``split='val'`` draws episodes from the training digits restricted to images held out from
training (the last fifth of each class), which measures generalisation to new drawings but not
to new classes, and never touches the evaluation digits.

Images are upsampled bilinearly from 8x8 to 24x24 and padded to 28x28 (MNIST's margin), scaled to
[0, 1] with ink = 1, so the Conv4 built for glyphs and Omniglot runs unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import config, param
from ..errors import ConfigError
from .episodes import ClassPool, EpisodeConfig, EpisodicImages

__all__ = ["DigitsConfig", "Digits", "BACKGROUND_DIGITS", "EVALUATION_DIGITS"]

BACKGROUND_DIGITS = (0, 1, 2, 3, 4, 5)
EVALUATION_DIGITS = (6, 7, 8, 9)
HELD_OUT_FRACTION = 0.2


@config
class DigitsConfig(EpisodeConfig):
    ways: int = param(3, "classes per task (N); at most 4, the number of evaluation digits", ge=2, le=4)


def _load() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError("the digits benchmark reads scikit-learn's bundled digits; install it with "
                          "`pip install metareg[digits]` (or `pip install scikit-learn`).") from None
    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # values are 0..16
    x = F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False)
    x = F.pad(x, (2, 2, 2, 2)).clamp(0, 1)
    return (x * 255).round().to(torch.uint8), torch.as_tensor(d.target, dtype=torch.long)


def _pool(x: torch.Tensor, y: torch.Tensor, digits, name: str, part=None) -> ClassPool:
    blocks, counts = [], []
    for d in digits:
        imgs = x[y == d]
        if part is not None:
            imgs = imgs[part(len(imgs))]
        blocks.append(imgs)
        counts.append(len(imgs))
    return ClassPool(torch.cat(blocks), counts, name=name, class_names=[str(d) for d in digits])


class Digits(EpisodicImages):
    def __init__(self, config: DigitsConfig) -> None:
        super().__init__(config)
        x, y = _load()
        cut = lambda n: int(round(n * (1 - HELD_OUT_FRACTION)))  # noqa: E731
        self.pools = {
            "train": _pool(x, y, BACKGROUND_DIGITS, "training", lambda n: slice(0, cut(n))),
            "val": _pool(x, y, BACKGROUND_DIGITS, "validation (held-out images of the training digits)",
                         lambda n: slice(cut(n), n)),
            "test": _pool(x, y, EVALUATION_DIGITS, "evaluation"),
        }
        self._finish((1, 28, 28))
