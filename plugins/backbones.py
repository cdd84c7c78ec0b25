"""Task-batched backbones: ``mlp``."""

import metareg
from metareg.nets import mlp as _mlp


@metareg.backbone("mlp", summary="fully connected ReLU network; hidden widths via backbone options (default 40, 40)")
def mlp(input_shape, output_dim, hidden=(40, 40)):
    return _mlp(input_shape, output_dim, hidden=hidden)


@metareg.hookimpl
def register_backbones(register):
    register(mlp)
