"""Task-batched backbones over flat parameter buffers."""

from .functional import Flatten, FunctionalNet, Layer, Linear, ReLU, differentiated_once, is_differentiated_once
from .mlp import mlp

__all__ = ["FunctionalNet", "Layer", "Linear", "ReLU", "Flatten", "mlp", "differentiated_once",
           "is_differentiated_once"]
