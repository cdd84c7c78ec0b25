"""Task-batched backbones: ``mlp``, ``conv4``, ``resnet12``."""

import metareg
from metareg import conv4 as _conv4
from metareg import mlp as _mlp
from metareg import resnet12 as _resnet12


@metareg.backbone("mlp", summary="fully connected ReLU network; hidden widths via backbone options (default 40, 40)")
def mlp(input_shape, output_dim, hidden=(40, 40)):
    return _mlp(input_shape, output_dim, hidden=hidden)


@metareg.backbone("conv4", summary="4 x [conv3x3-64, batch norm, ReLU, max-pool 2] + linear head; grouped convs over tasks",
                  paper="Vinyals et al. Matching Networks for One Shot Learning. NeurIPS 2016")
def conv4(input_shape, output_dim, width=64, depth=4, transductive=True):
    return _conv4(input_shape, output_dim, width=width, depth=depth, transductive=transductive)


@metareg.backbone("resnet12", summary="4 residual blocks (64-160-320-640, 3 conv3x3+BN, 1x1 shortcut, max-pool) + linear head",
                  paper="Oreshkin, Rodriguez, Lacoste. TADAM. NeurIPS 2018; Lee et al. MetaOptNet. CVPR 2019")
def resnet12(input_shape, output_dim, widths=(64, 160, 320, 640), transductive=True):
    return _resnet12(input_shape, output_dim, widths=widths, transductive=transductive)


@metareg.hookimpl
def register_backbones(register):
    register(mlp)
    register(conv4)
    register(resnet12)
