"""Task-batched convolutional backbones: Conv4 and ResNet-12.

Both are :class:`FunctionalNet` s, so their parameters live in one flat buffer: ``[P]`` shared by
all tasks, or ``[T, P]`` fast weights, one row per task.  With ``[T, P]`` every convolution is
one grouped convolution over the whole meta-batch (the T tasks become T groups), so no learner
loops over tasks in Python.

Inputs ``[T, N, C, H, W]``, outputs ``[T, N, out_dim]``.

Layout.  Between the convolutional layers the activations of the whole meta-batch are kept in
the *grouped* layout ``[N, T*C, H, W]`` (task t's channels are the t-th block of C): a grouped
convolution with ``groups=T`` reads and writes it directly, ``F.batch_norm`` over it in training
mode is exactly per-task batch norm (one statistic per task and channel), and pooling and
activations are layout-agnostic.  ``[T, N, C, H, W]`` is permuted into it once at the first
convolutional layer and back once after the last, instead of twice per layer.

Batch norm.  Statistics are always those of the current task's examples (there are no running
statistics: fast weights change the activations of every task differently, so a running average
across tasks means nothing):

* ``transductive=True`` (MAML's setting): each forward normalises with the mean and variance of
  the examples it is given, per task and channel.  A query forward therefore sees the other query
  examples of its task; accuracies obtained this way are transductive and must be reported so.
  This is batch norm in training mode on the grouped layout: the fused kernels with a double
  backward of our own (:func:`metareg.nets.batchnorm.fused_batch_norm`, whose derivatives
  ``tests/nets/test_batchnorm.py`` checks against ``F.batch_norm``'s), and ``tests/nets`` checks
  the whole second-order meta-gradient against a per-task loop over the plain-torch
  :func:`~metareg.nets.batchnorm.batch_norm`.
* ``transductive=False``: the statistics come from the support examples only and are applied to
  the query examples.  The forward must then be told which examples are support: call
  ``net(flat, torch.cat([support_x, query_x], 1), support_size=S)``.  A forward on support
  examples alone passes ``support_size=N``.  Without ``support_size`` the forward raises rather
  than silently falling back to transductive statistics.  This mode uses plain differentiable
  torch (the fused kernel cannot take statistics from a subset).

On CPU the meta-batch is run in chunks of tasks small enough that every activation stays under
``ConvNet.cpu_chunk_bytes`` (see there); each chunk is still one grouped forward.

Forwards that will be differentiated at most once (inside :func:`metareg.nets.differentiated_once`,
where MAML's learners run the query forward, or under ``torch.no_grad()``) end each transductive
block with :func:`metareg.ops.bn_pool_relu` on CPU: batch norm, pooling and ReLU in one kernel,
fewer full-size passes over the activations, and no second derivative; and their 3x3 convolutions
with at least ``WINOGRAD_MIN_CHANNELS`` channels on images of at least ``WINOGRAD_MIN_SIZE``
pixels run by Winograd's F(4x4, 3x3) (:func:`metareg.ops.conv3x3_winograd`: 4x fewer
multiplications, the convolution's result up to rounding, differentiable once).  The inner steps'
support forwards, which second-order MAML differentiates twice, keep the fused batch norm above
and ``F.conv2d``.

Exact rewrites used by the forward (they change results only by rounding):

* a convolution's bias followed by batch norm cancels (the mean subtracts it; the variance does
  not see it), so ConvBlock skips it: ``conv.bias`` stays in the parameter layout (Conv4's
  published parameter count) but gets an exactly-zero gradient;
* max-pooling commutes with a monotone activation (ReLU, leaky ReLU), so the activation runs on
  the 4x smaller pooled tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from ..errors import ConfigError, ShapeError
from .batchnorm import batch_norm, grouped_affine, grouped_batch_norm
from .functional import Flatten, FunctionalNet, Layer, Linear, is_differentiated_once

__all__ = ["batch_norm", "grouped_batch_norm", "grouped_conv2d", "ConvBlock", "ResBlock", "ConvNet", "conv4",
           "resnet12"]


#: batched convolutions with at most this many inputs per output (C*k*k) use im2col + bmm
IM2COL_MAX = 32


#: 3x3 convolutions differentiated at most once (see :func:`metareg.nets.differentiated_once`) run
#: by Winograd's F(4x4, 3x3) (:func:`metareg.ops.conv3x3_winograd`, CPU) on images at least this
#: large with at least this many input and output channels per task: on Conv4's query shapes it
#: is 1.7x oneDNN's direct convolution forward + backward at 14x14, 1.2x at 7x7, slower at 3x3
#: (``benchmarks/bench_ops.py -k winograd``)
WINOGRAD_MIN_SIZE, WINOGRAD_MIN_CHANNELS = 6, 16

#: memory format of the grouped layout: channels-last ([N, H, W, T*C] in memory) makes
#: max-pooling 7x and batch norm 1.2-3x faster on CPU than channels-first, and the grouped
#: convolutions (oneDNN's native format) 1.1-1.4x faster
GROUPED_FORMAT = torch.channels_last


def to_grouped(x: Tensor) -> Tensor:
    """[T, N, C, H, W] -> the grouped layout [N, T*C, H, W] (one copy)."""
    t, n, c, h, w = x.shape
    if GROUPED_FORMAT is torch.channels_last:
        return x.permute(1, 3, 4, 0, 2).contiguous().view(n, h, w, t * c).permute(0, 3, 1, 2)
    return x.transpose(0, 1).reshape(n, t * c, h, w)


def from_grouped(x: Tensor, t: int) -> Tensor:
    """The grouped layout [N, T*C, H, W] -> [T, N, C, H, W] (a view)."""
    return x.unflatten(1, (t, x.shape[1] // t)).transpose(0, 1)


def grouped_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, t: int, batched: bool, padding: int) -> Tensor:
    """``x`` [N, T*C, H, W] convolved per task with ``weight`` [O, C, k, k] (shared) or
    [T, O, C, k, k] (per task) -> [N, T*O, H', W']: one grouped convolution, the T tasks as
    its T groups."""
    n, tc, h, w = x.shape
    c = tc // t
    if (weight.shape[-1] == 3 and padding == 1 and bias is None and min(h, w) >= WINOGRAD_MIN_SIZE
            and min(c, weight.shape[-4]) >= WINOGRAD_MIN_CHANNELS and is_differentiated_once()
            and ops._compiled("conv3x3_winograd", x)):
        # differentiated at most once: Winograd's F(4x4, 3x3), 4x fewer multiplications
        weight = weight.reshape(-1, c, 3, 3) if batched else weight.repeat(t, 1, 1, 1)
        return _in_format(ops.conv3x3_winograd(x, weight, t))
    if not batched:
        if x.is_contiguous():
            # channels-first [N, T*C, H, W] is [N*T, C, H, W] in memory: one plain convolution
            y = F.conv2d(x.reshape(n * t, c, h, w), weight, bias, padding=padding)
            return _in_format(y.view(n, t * y.shape[1], *y.shape[2:]))
        weight = weight.repeat(t, 1, 1, 1)
        bias = None if bias is None else bias.repeat(t)
        return _in_format(F.conv2d(x, weight, bias, padding=padding, groups=t))
    o, k = weight.shape[1], weight.shape[-1]
    if c * k * k <= IM2COL_MAX and x.is_contiguous():
        # few inputs per output (an image's first layer, channels-first): the grouped
        # convolution is slower here, forward and weight gradient alike (0.45 s against 0.30 s
        # at T=32, N=75, 1 -> 64 on 28x28), so lower it to im2col + one batched GEMM per
        # (example, task) whose output is already in the grouped layout
        cols = F.unfold(x.reshape(n * t, c, h, w), k, padding=padding)  # [N*T, C*k*k, L]
        ho, wo = h + 2 * padding - k + 1, w + 2 * padding - k + 1
        y = torch.matmul(weight.reshape(t, o, c * k * k), cols.view(n, t, c * k * k, ho * wo))  # [N, T, O, L]
        if bias is not None:
            y = y + bias.view(t, o, 1)
        return _in_format(y.view(n, t * o, ho, wo))
    y = F.conv2d(x, weight.reshape(t * o, *weight.shape[2:]), None if bias is None else bias.reshape(t * o),
                 padding=padding, groups=t)
    return _in_format(y)


def _in_format(y: Tensor) -> Tensor:
    # a 1-channel input ([N, 1, H, W] with one task) is channels-first and channels-last at once,
    # and the convolution then answers channels-first: restore the grouped format (one copy)
    if GROUPED_FORMAT is torch.channels_last and not y.is_contiguous(memory_format=torch.channels_last):
        return y.contiguous(memory_format=torch.channels_last)
    return y


def _kaiming_conv(shape: tuple[int, ...], generator, dtype) -> Tensor:
    # nn.Conv2d's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = 1.0 / math.sqrt(math.prod(shape[1:]))
    return (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * bound


class _NormLayer(Layer):
    """A layer whose forward takes ``support_size`` (see the module docstring)."""

    transductive: bool = True

    def forward(self, p, x, batched, support_size: int | None = None):  # noqa: D401
        raise NotImplementedError

    def forward_grouped(self, p, x, t, batched, support_size: int | None = None):
        raise NotImplementedError

    def _stats_from(self, x: Tensor, support_size: int | None, examples: int | None = None) -> int | None:
        if self.transductive:
            return None
        if support_size is None:
            raise ConfigError(
                "this backbone uses non-transductive batch norm (transductive=False), so its forward needs "
                "support_size=S with the support examples first in x; the caller passed none. Either call "
                "net(flat, cat([support_x, query_x], 1), support_size=S) or build the backbone with transductive=True."
            )
        n = x.shape[1] if examples is None else examples
        if not 0 < support_size <= n:
            raise ShapeError(f"support_size must be in 1..{n} (the examples per task), got {support_size}.")
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
        t = x.shape[0]
        return from_grouped(self.forward_grouped(p, to_grouped(x), t, batched, support_size), t)

    def forward_grouped(self, p, x, t, batched, support_size=None):
        """The block on the grouped layout [N, T*C, H, W] (see the module docstring)."""
        s = self._stats_from(x, support_size, examples=x.shape[0])
        # conv.bias is skipped: batch norm's mean cancels it exactly (see the module docstring)
        y = grouped_conv2d(x, p["conv.weight"], None, t, batched, padding=1)
        if s is None and is_differentiated_once() and ops._compiled("bn_pool_relu", y):
            # batch norm, pool and ReLU in one kernel (differentiable once: see the module docstring)
            return ops.bn_pool_relu(y, *grouped_affine(p["bn.weight"], p["bn.bias"], t), self.eps)
        y = grouped_batch_norm(y, p["bn.weight"], p["bn.bias"], t, eps=self.eps, support_size=s)
        return torch.relu(F.max_pool2d(y, 2))  # pool first: the same, on a quarter of the data


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
        t = x.shape[0]
        return from_grouped(self.forward_grouped(p, to_grouped(x), t, batched, support_size), t)

    def forward_grouped(self, p, x, t, batched, support_size=None):
        """The block on the grouped layout [N, T*C, H, W] (see the module docstring)."""
        s = self._stats_from(x, support_size, examples=x.shape[0])
        y = x
        for i in (1, 2, 3):
            y = grouped_conv2d(y, p[f"conv{i}.weight"], None, t, batched, padding=1)
            y = grouped_batch_norm(y, p[f"bn{i}.weight"], p[f"bn{i}.bias"], t, eps=self.eps, support_size=s)
            if i < 3:
                y = F.leaky_relu(y, self.slope)
        short = grouped_conv2d(x, p["short.weight"], None, t, batched, padding=0)
        short = grouped_batch_norm(short, p["bns.weight"], p["bns.bias"], t, eps=self.eps, support_size=s)
        # pool first: leaky ReLU is increasing, so it commutes with the max
        return F.leaky_relu(F.max_pool2d(y + short, 2), self.slope)


class GlobalAvgPool(Layer):
    def forward(self, p, x, batched):
        return x.mean(dim=(3, 4))


class ConvNet(FunctionalNet):
    """A :class:`FunctionalNet` whose normalising layers accept ``support_size``."""

    #: On CPU the forward runs the meta-batch in chunks of tasks whose largest activation (the
    #: first block's, e.g. [N, chunk*64, 28, 28]) stays under this many bytes; 0: one chunk.
    #: Tensors above glibc's largest mmap threshold (32 MiB) are mmapped fresh on every
    #: allocation and page-faulted in (0.25 ms per MiB here, more than the op itself for
    #: elementwise ops), and smaller ones also stay in cache between ops: at T=32 (Conv4,
    #: 5-way 1-shot 15-query) chunks of 2 tasks make the second-order step 1.6x faster than one
    #: chunk of 32.  The chunks are still task-batched (grouped convolutions over the chunk).
    cpu_chunk_bytes: int = 32 * 2**20

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
        chunk = self.tasks_per_chunk(x, start, end)
        if chunk < x.shape[0]:
            xs = x.split(chunk)
            fs = flat.split(chunk) if batched else [flat] * len(xs)
            return torch.cat([self._forward(f, xi, start, end, batched, support_size) for f, xi in zip(fs, xs)])
        return self._forward(flat, x, start, end, batched, support_size)

    def tasks_per_chunk(self, x: Tensor, start: int = 0, end: int | None = None) -> int:
        """How many tasks of ``x`` [T, N, C, H, W] one pass over layers ``start:end`` takes at a
        time: fewer than T on CPU when the activations would pass ``cpu_chunk_bytes``, else T.
        A learner that runs its meta-batch chunk by chunk (MAML's ``recompute``) follows it, so
        its chunks cost no batching the forward had not already given up."""
        end = len(self.layers) if end is None else end
        if not self.cpu_chunk_bytes or x.device.type != "cpu" or x.dim() != 5:
            return x.shape[0]
        h, w = x.shape[-2:]
        largest = 0  # elements of the largest activation of one example
        for layer in self.layers[start:end]:
            if isinstance(layer, _NormLayer):
                largest = max(largest, layer.out_channels * h * w)
                h, w = h // 2, w // 2
        per_task = largest * x.shape[1] * x.element_size()
        return max(1, self.cpu_chunk_bytes // per_task) if per_task else x.shape[0]

    def _forward(self, flat, x, start, end, batched, support_size):
        t = x.shape[0]
        grouped = False  # x in the grouped layout [N, T*C, H, W]: kept across consecutive blocks
        for layer, p in zip(self.layers[start:end], self.views(flat, start, end)):
            if isinstance(layer, _NormLayer):
                if not grouped:
                    x, grouped = to_grouped(x), True
                x = layer.forward_grouped(p, x, t, batched, support_size=support_size)
                continue
            if grouped:
                x, grouped = from_grouped(x, t), False
            x = layer.forward(p, x, batched)
        return from_grouped(x, t) if grouped else x

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
