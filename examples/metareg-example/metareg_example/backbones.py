"""A backbone: a narrow MLP, built from metareg's task-batched layers."""

import math

import metareg


@metareg.backbone("narrow_mlp", summary="ReLU MLP with one hidden layer of `width` units")
def narrow_mlp(input_shape, output_dim, width=16):
    # inputs [T, N, *input_shape] -> outputs [T, N, output_dim]; the last Linear is the task head
    layers = [metareg.Flatten(), metareg.Linear(math.prod(input_shape), width), metareg.ReLU(),
              metareg.Linear(width, output_dim)]
    return metareg.FunctionalNet(layers, out_dim=output_dim)
