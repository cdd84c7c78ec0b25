"""Task-batched convolutional backbones: Conv4 and ResNet-12.

Both are :class:`FunctionalNet` s, so their parameters live in one flat buffer: ``[P]`` shared by
all tasks, or ``[T, P]`` fast weights, one row per task.  With ``[T, P]`` every convolution is
one grouped convolution over the whole meta-batch (the T tasks become T groups), so no learner
loops over tasks in Python.

Inputs ``[T, N, C, H, W]``, outputs ``[T, N, out_dim]``.

Batch norm is written here in plain differentiable torch rather than with ``F.batch_norm``:
second-order MAML differentiates through the normalisation twice, and autograd's double backward
of the fused batch-norm kernel has been wrong (pytorch/pytorch#196699).  Statistics are always
those of the current task's examples (there are no running statistics: fast weights change the
activations of every task differently, so a running average across tasks means nothing):

* ``transductive=True`` (MAML's setting): each forward normalises with the mean and variance of
  the examples it is given, per task and channel.  A query forward therefore sees the other query
  examples of its task; accuracies obtained this way are transductive and must be reported so.
* ``transductive=False``: the statistics come from the support examples only and are applied to
  the query examples.  The forward must then be told which examples are support: call
  ``net(flat, torch.cat([support_x, query_x], 1), support_size=S)``.  A forward on support
  examples alone passes ``support_size=N``.  Without ``support_size`` the forward raises rather
  than silently falling back to transductive statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, ShapeError
from .functional import Flatten, FunctionalNet, Layer, Linear

__all__ = ["batch_norm", "conv2d", "ConvBlock", "ResBlock", "ConvNet", "conv4", "resnet12"]


#: batched convolutions with at most this many inputs per output (C*k*k) use im2col + bmm
IM2COL_MAX = 32


def batch_norm(x: Tensor, weight: Tensor, bias: Tensor, *, eps: float = 1e-5, support_size: int | None = None) -> Tensor:
    """Per-task batch norm of ``x`` [T, N, C, H, W] with affine ``weight``/``bias`` [C] or [T, C].

    Mean and (biased) variance are taken per task and channel over the N examples and the spatial
    positions, from all N examples or only the first ``support_size`` of them.
    """
    ref = x if support_size is None else x[:, :support_size]
    mean = ref.mean(dim=(1, 3, 4), keepdim=True)
    var = (ref - mean).pow(2).mean(dim=(1, 3, 4), keepdim=True)
    scale = torch.rsqrt(var + eps)
    c = x.shape[2]
    w = weight.view(-1 if weight.dim() == 2 else 1, 1, c, 1, 1)
    b = bias.view(-1 if bias.dim() == 2 else 1, 1, c, 1, 1)
    # fold the normalisation into one scale and shift: two ops on the big tensor instead of four
    a = scale * w
    return x * a + (b - mean * a)


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, batched: bool, padding: int) -> Tensor:
    """``x`` [T, N, C, H, W] convolved with ``weight`` [O, C, k, k] (shared) or [T, O, C, k, k]
    (per task, one grouped convolution over the meta-batch) -> [T, N, O, H', W']."""
    t, n, c, h, w = x.shape
    if not batched:
        y = F.conv2d(x.reshape(t * n, c, h, w), weight, bias, padding=padding)
        return y.view(t, n, *y.shape[1:])
    o, k = weight.shape[1], weight.shape[-1]
    if c * k * k <= IM2COL_MAX:
        # few input channels (an image's first layer): the grouped convolution's weight gradient
        # is slow on CPU here (2-3x slower than this in our measurement on 1-channel 28x28 inputs,
        # while it is 3x faster than this with 64 channels), so lower it to im2col + one bmm
        cols = F.unfold(x.reshape(t * n, c, h, w), k, padding=padding)  # [T*N, C*k*k, L]
        ho, wo = h + 2 * padding - k + 1, w + 2 * padding - k + 1
        cols = cols.view(t, n, c * k * k, ho * wo).transpose(1, 2).reshape(t, c * k * k, n * ho * wo)
        wm = weight.reshape(t, o, c * k * k)
        y = torch.bmm(wm, cols) if bias is None else torch.baddbmm(bias.unsqueeze(-1), wm, cols)
        return y.view(t, o, n, ho, wo).transpose(1, 2)
    # [T, N, C, H, W] -> [N, T*C, H, W]: the tasks become the groups of one convolution
    xg = x.transpose(0, 1).reshape(n, t * c, h, w)
    y = F.conv2d(xg, weight.reshape(t * o, *weight.shape[2:]), None if bias is None else bias.reshape(t * o),
                 padding=padding, groups=t)
    # a view, not a copy: the next block's transpose(0, 1) makes it contiguous again for free
    return y.view(n, t, o, *y.shape[2:]).transpose(0, 1)


def _pool(x: Tensor) -> Tensor:
    t, n = x.shape[:2]
    y = F.max_pool2d(x.reshape(t * n, *x.shape[2:]), 2)
    return y.view(t, n, *y.shape[1:])


def _kaiming_conv(shape: tuple[int, ...], generator, dtype) -> Tensor:
    # nn.Conv2d's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = 1.0 / math.sqrt(math.prod(shape[1:]))
    return (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * bound


class _NormLayer(Layer):
    """A layer whose forward takes ``support_size`` (see the module docstring)."""

    transductive: bool = True

    def forward(self, p, x, batched, support_size: int | None = None):  # noqa: D401
        raise NotImplementedError

    def _stats_from(self, x: Tensor, support_size: int | None) -> int | None:
        if self.transductive:
            return None
        if support_size is None:
            raise ConfigError(
                "this backbone uses non-transductive batch norm (transductive=False), so its forward needs "
                "support_size=S with the support examples first in x; the caller passed none. Either call "
                "net(flat, cat([support_x, query_x], 1), support_size=S) or build the backbone with transductive=True."
            )
        if not 0 < support_size <= x.shape[1]:
            raise ShapeError(f"support_size must be in 1..{x.shape[1]} (the examples per task), got {support_size}.")
        return support_size


class ConvBlock(_NormLayer):
    """conv3x3 -> batch norm -> ReLU -> max-pool 2 (one stage of Conv4)."""

    def __init__(self, in_channels: int, out_channels: int, *, transductive: bool = True, eps: float = 1e-5) -> None:
        self.in_channels, self.out_channels = in_channels, out_channels
        self.transductive, self.eps = transductive, eps
        self.shapes = (("conv.weight", (out_channels, in_channels, 3, 3)), ("conv.bias", (out_channels,)),
                       ("bn.weight", (out_channels,)), ("bn.bias", (out_channels,)))

    def init(self, name, shape, generator, dtype):
        if name == "conv.weight":
            return _kaiming_conv(shape, generator, dtype)
        if name == "conv.bias":
            return (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) / math.sqrt(self.in_channels * 9)
        return torch.ones(shape, dtype=dtype) if name == "bn.weight" else torch.zeros(shape, dtype=dtype)

    def forward(self, p, x, batched, support_size=None):
        s = self._stats_from(x, support_size)
        y = conv2d(x, p["conv.weight"], p["conv.bias"], batched, padding=1)
        y = torch.relu(batch_norm(y, p["bn.weight"], p["bn.bias"], eps=self.eps, support_size=s))
        return _pool(y)


class ResBlock(_NormLayer):
    """ResNet-12 block (Oreshkin et al. 2018; Lee et al. 2019): three conv3x3+BN (leaky ReLU 0.1
    between them), a conv1x1+BN shortcut, the sum through a leaky ReLU, then max-pool 2."""

    def __init__(self, in_channels: int, out_channels: int, *, transductive: bool = True, eps: float = 1e-5,
                 slope: float = 0.1) -> None:
        self.in_channels, self.out_channels = in_channels, out_channels
        self.transductive, self.eps, self.slope = transductive, eps, slope
        shapes = []
        for i, cin in enumerate((in_channels, out_channels, out_channels), 1):
            shapes += [(f"conv{i}.weight", (out_channels, cin, 3, 3)), (f"bn{i}.weight", (out_channels,)),
                       (f"bn{i}.bias", (out_channels,))]
        shapes += [("short.weight", (out_channels, in_channels, 1, 1)), ("bns.weight", (out_channels,)),
                   ("bns.bias", (out_channels,))]
        self.shapes = tuple(shapes)

    def init(self, name, shape, generator, dtype):
        if name.endswith(".weight") and len(shape) == 4:
            # Kaiming-normal for leaky ReLU (fan_out), as the reference ResNet-12 implementations use
            std = math.sqrt(2.0 / (1 + self.slope**2)) / math.sqrt(shape[0] * shape[2] * shape[3])
            return torch.randn(shape, generator=generator, dtype=dtype) * std
        return torch.ones(shape, dtype=dtype) if name.endswith("weight") else torch.zeros(shape, dtype=dtype)

    def forward(self, p, x, batched, support_size=None):
        s = self._stats_from(x, support_size)
        y = x
        for i in (1, 2, 3):
            y = conv2d(y, p[f"conv{i}.weight"], None, batched, padding=1)
            y = batch_norm(y, p[f"bn{i}.weight"], p[f"bn{i}.bias"], eps=self.eps, support_size=s)
            if i < 3:
                y = F.leaky_relu(y, self.slope)
        short = conv2d(x, p["short.weight"], None, batched, padding=0)
        short = batch_norm(short, p["bns.weight"], p["bns.bias"], eps=self.eps, support_size=s)
        return _pool(F.leaky_relu(y + short, self.slope))


class GlobalAvgPool(Layer):
    def forward(self, p, x, batched):
        return x.mean(dim=(3, 4))


class ConvNet(FunctionalNet):
    """A :class:`FunctionalNet` whose normalising layers accept ``support_size``."""

    def __init__(self, layers: Sequence[Layer], *, head_from: int, out_dim: int, transductive: bool) -> None:
        super().__init__(layers, head_from=head_from, out_dim=out_dim)
        self.transductive = transductive

    def forward(self, flat: Tensor, x: Tensor, start: int = 0, end: int | None = None, *,
                support_size: int | None = None) -> Tensor:
        """Layers ``start:end`` on ``x`` [T, N, C, H, W] with ``flat`` [P_range] or [T, P_range];
        ``support_size``: the first S of the N examples are the support set (non-transductive BN)."""
        end = len(self.layers) if end is None else end
        batched = flat.dim() == 2
        if batched and flat.shape[0] != x.shape[0]:
            raise ShapeError(f"per-task parameters [T, P] need x with the same T; got {flat.shape[0]} and {x.shape[0]}.")
        for layer, p in zip(self.layers[start:end], self.views(flat, start, end)):
            if isinstance(layer, _NormLayer):
                x = layer.forward(p, x, batched, support_size=support_size)
            else:
                x = layer.forward(p, x, batched)
        return x

    def __call__(self, flat: Tensor, x: Tensor, start: int = 0, end: int | None = None, *,
                 support_size: int | None = None) -> Tensor:
        return self.forward(flat, x, start, end, support_size=support_size)


def _check_image_shape(name: str, input_shape: Sequence[int], stages: int) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ConfigError(f"{name} takes images shaped (C, H, W); the benchmark gives inputs of shape {tuple(input_shape)}. "
                          "Use the mlp backbone for vector inputs.")
    c, h, w = (int(v) for v in input_shape)
    if min(h, w) < 2**stages:
        raise ConfigError(f"{name} halves the image {stages} times, so it needs at least {2**stages}x{2**stages} pixels; "
                          f"got {h}x{w}.")
    return c, h, w


def conv4(input_shape: Sequence[int], output_dim: int, *, width: int = 64, depth: int = 4,
          transductive: bool = True) -> ConvNet:
    """Conv4 of Vinyals et al. (2016) / Finn et al. (2017): ``depth`` x [conv3x3-``width``, batch
    norm, ReLU, max-pool 2], flatten, linear head.  On 28x28x1 with 5 ways: 112,261 parameters."""
    if width < 1 or depth < 1:
        raise ConfigError(f"conv4 needs width >= 1 and depth >= 1, got width={width}, depth={depth}.")
    c, h, w = _check_image_shape("conv4", input_shape, depth)
    layers: list[Layer] = []
    for i in range(depth):
        layers.append(ConvBlock(c if i == 0 else width, width, transductive=transductive))
        h, w = h // 2, w // 2
    layers += [Flatten(), Linear(width * h * w, output_dim)]
    return ConvNet(layers, head_from=len(layers) - 1, out_dim=output_dim, transductive=transductive)


def resnet12(input_shape: Sequence[int], output_dim: int, *, widths: Sequence[int] = (64, 160, 320, 640),
             transductive: bool = True) -> ConvNet:
    """ResNet-12 (Oreshkin et al. 2018, TADAM; Lee et al. 2019, MetaOptNet): four residual blocks of
    ``widths`` channels, global average pooling, linear head.  ``widths=(64, 128, 256, 512)`` or
    smaller trades accuracy for speed."""
    widths = tuple(int(v) for v in widths)
    if len(widths) != 4 or min(widths) < 1:
        raise ConfigError(f"resnet12 needs four positive block widths like (64, 160, 320, 640), got {widths}.")
    c, _, _ = _check_image_shape("resnet12", input_shape, 4)
    layers: list[Layer] = []
    for i, wd in enumerate(widths):
        layers.append(ResBlock(c if i == 0 else widths[i - 1], wd, transductive=transductive))
    layers += [GlobalAvgPool(), Linear(widths[-1], output_dim)]
    return ConvNet(layers, head_from=len(layers) - 1, out_dim=output_dim, transductive=transductive)
