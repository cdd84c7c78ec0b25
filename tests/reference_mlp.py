"""The sinusoid MLP 1-40-40-1 written out by hand over a flat parameter vector: the reference the
meta-learner tests check the batched fast-weight path against, one task at a time."""

import torch
import torch.nn.functional as F

SHAPES = [(40, 1), (40, 40), (1, 40)]  # (out, in) of each Linear, in the backbone's flat order


def unflatten(theta):
    """Flat [P] -> [(weight, bias), ...] views, in the order FunctionalNet lays them out."""
    out, off = [], 0
    for o, i in SHAPES:
        w = theta[off: off + o * i].view(o, i)
        off += o * i
        out.append((w, theta[off: off + o]))
        off += o
    assert off == theta.numel()
    return out


def mlp(theta, x):
    """The network at flat parameters ``theta`` on x [N, 1]."""
    layers = unflatten(theta)
    for j, (w, b) in enumerate(layers):
        x = F.linear(x, w, b)
        if j < len(layers) - 1:
            x = torch.relu(x)
    return x
