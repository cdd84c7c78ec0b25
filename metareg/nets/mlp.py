"""Multi-layer perceptron backbone (the MAML paper's sinusoid network is ``mlp`` with hidden (40, 40))."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .functional import Flatten, FunctionalNet, Layer, Linear, ReLU

__all__ = ["mlp"]


def mlp(input_shape: Sequence[int], output_dim: int, *, hidden: Sequence[int] = (40, 40)) -> FunctionalNet:
    """``in -> hidden[0] -> ReLU -> ... -> output_dim``; the last Linear is the task head."""
    layers: list[Layer] = []
    if len(input_shape) > 1:
        layers.append(Flatten())
    width = math.prod(input_shape)
    for h in hidden:
        layers += [Linear(width, h), ReLU()]
        width = h
    layers.append(Linear(width, output_dim))
    return FunctionalNet(layers, head_from=len(layers) - 1, out_dim=output_dim)
