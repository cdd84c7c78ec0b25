"""Task-batched backbones over flat parameter buffers."""

from .functional import Flatten, FunctionalNet, Layer, Linear, ReLU
from .mlp import mlp

__all__ = ["FunctionalNet", "Layer", "Linear", "ReLU", "Flatten", "mlp"]
