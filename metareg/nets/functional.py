"""Task-batched functional networks over one flat parameter buffer.

A :class:`FunctionalNet` is a sequence of layers whose parameters live in a single flat vector
(``[P]``, shared by all tasks) or matrix (``[T, P]``, one row of fast weights per task).  Each
layer reads its tensors as *views* of that buffer (``split`` + ``view``: no copy forward, one
``cat`` backward), and every forward is batched over the task dimension, so a meta-learner never
loops over tasks in Python and an inner update is one op on the whole ``[T, P]`` buffer.

Shapes: inputs ``[T, N, *in_shape]``, outputs ``[T, N, out_dim]``.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Layer", "Linear", "ReLU", "Flatten", "FunctionalNet", "differentiated_once", "is_differentiated_once"]

_once = threading.local()


@contextlib.contextmanager
def differentiated_once() -> Iterator[None]:
    """Promise that the forwards run inside will be differentiated at most once (no
    ``create_graph`` through them), so a backbone may use kernels without second derivatives.

    MAML-family learners run the query forward at the fast weights inside it: the query loss is
    differentiated once, and the second-order terms come from the inner steps' support graphs,
    which run outside.  Conv4 then ends each block with :func:`metareg.ops.bn_pool_relu` (fewer
    full-size passes on CPU).  A broken promise is not silent: differentiating such a gradient
    again raises.  Forwards under ``torch.no_grad()`` need no promise.  Thread-local; nests.
    """
    depth = getattr(_once, "depth", 0)
    _once.depth = depth + 1
    try:
        yield
    finally:
        _once.depth = depth


def is_differentiated_once() -> bool:
    """Whether the caller is inside :func:`differentiated_once` (or needs no gradient at all)."""
    return getattr(_once, "depth", 0) > 0 or not torch.is_grad_enabled()


class Layer:
    """One layer: its parameter shapes, an initialiser and a task-batched forward."""

    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def init(self, name: str, shape: tuple[int, ...], generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
        raise NotImplementedError

    def forward(self, p: dict[str, Tensor], x: Tensor, batched: bool) -> Tensor:
        """``p`` holds this layer's tensors, with a leading T dimension when ``batched``."""
        raise NotImplementedError

    #: True when :meth:`vjp` is implemented (then inner-loop gradients skip the autograd engine)
    has_vjp = False

    def vjp(self, p: dict[str, Tensor], x: Tensor, out: Tensor, grad_out: Tensor,
            need_input_grad: bool) -> tuple[Tensor | None, dict[str, Tensor]]:
        """Batched vector-Jacobian product: (d loss / d x, {name: d loss / d p[name]}) from
        ``grad_out`` = d loss / d out, written in differentiable ops so that second-order
        meta-gradients flow through it.  ``p`` holds per-task tensors (leading T) or tensors
        shared by all tasks; the parameter gradients are always per task (leading T)."""
        raise NotImplementedError

    #: True when :meth:`tangent` and :meth:`vjp_tangent` are implemented (then MAML-style learners
    #: form second-order meta-gradients in closed form, without the autograd engine)
    has_tangent = False

    def tangent(self, p: dict[str, Tensor], dp: dict[str, Tensor], x: Tensor, dx: Tensor | None,
                out: Tensor) -> Tensor:
        """Forward-mode derivative (Pearlmutter's R-operator) of :meth:`forward`: the change of
        ``out`` for per-task parameter directions ``dp`` (leading T) and input direction ``dx``
        (``None``: the input does not move)."""
        raise NotImplementedError

    def vjp_tangent(self, p: dict[str, Tensor], dp: dict[str, Tensor], x: Tensor, dx: Tensor | None, out: Tensor,
                    grad_out: Tensor, d_grad_out: Tensor,
                    need_input_grad: bool) -> tuple[Tensor | None, dict[str, Tensor]]:
        """The R-operator of :meth:`vjp`: how (d loss / d x, d loss / d p) change when the
        parameters move along ``dp``, the input along ``dx`` and ``grad_out`` along ``d_grad_out``
        (per task, leading T).  With :meth:`tangent` this gives Hessian-vector products of a loss
        in one forward and one backward pass."""
        raise NotImplementedError


class Linear(Layer):
    def __init__(self, in_features: int, out_features: int) -> None:
        self.in_features, self.out_features = in_features, out_features
        self.shapes = (("weight", (out_features, in_features)), ("bias", (out_features,)))

    def init(self, name, shape, generator, dtype):
        # nn.Linear's default (Kaiming-uniform with a=sqrt(5) reduces to U(-1/sqrt(in), 1/sqrt(in)))
        bound = 1.0 / math.sqrt(self.in_features)
        return (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * bound

    def forward(self, p, x, batched):
        w, b = p["weight"], p["bias"]
        if not batched:
            return F.linear(x, w, b)
        # x [T, N, in] @ w^T [T, in, out] + b [T, 1, out] in one batched GEMM
        if x.dim() == 3:  # the common case: no reshape nodes on the (second-order) graph
            return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
        lead = x.shape[1:-1]
        xt = x.reshape(x.shape[0], -1, x.shape[-1])
        out = torch.baddbmm(b.unsqueeze(1), xt, w.transpose(1, 2))
        return out.view(x.shape[0], *lead, self.out_features)

    has_vjp = True

    def vjp(self, p, x, out, grad_out, need_input_grad):
        t = x.shape[0]
        flat3 = x.dim() == 3
        xt = x if flat3 else x.reshape(t, -1, self.in_features)
        go = grad_out if flat3 else grad_out.reshape(t, -1, self.out_features)
        grads = {"weight": torch.bmm(go.transpose(1, 2), xt), "bias": go.sum(1)}
        gx = None
        if need_input_grad:
            w = p["weight"]
            # shared weights (the first inner step): one GEMM over all tasks' rows
            gx = torch.bmm(go, w) if w.dim() == 3 else torch.matmul(go, w)
            gx = gx if flat3 else gx.view(x.shape)
        return gx, grads

    has_tangent = True

    def tangent(self, p, dp, x, dx, out):
        # out = x w^T + b  ->  d out = x dw^T + db + dx w^T
        t = x.shape[0]
        xt = x.reshape(t, -1, self.in_features)
        d = torch.baddbmm(dp["bias"].unsqueeze(1), xt, dp["weight"].transpose(1, 2))
        if dx is not None:
            w = p["weight"]
            dxt = dx.reshape(t, -1, self.in_features)
            d = torch.baddbmm(d, dxt, w.transpose(1, 2)) if w.dim() == 3 else d + torch.matmul(dxt, w.t())
        return d.view(out.shape)

    def vjp_tangent(self, p, dp, x, dx, out, grad_out, d_grad_out, need_input_grad):
        # G_w = go^T x, G_b = sum go, gx = go w  ->  their differentials
        t = x.shape[0]
        xt = x.reshape(t, -1, self.in_features)
        go = grad_out.reshape(t, -1, self.out_features)
        dgo = d_grad_out.reshape(t, -1, self.out_features)
        d_gw = torch.bmm(dgo.transpose(1, 2), xt)
        if dx is not None:
            d_gw = torch.baddbmm(d_gw, go.transpose(1, 2), dx.reshape(t, -1, self.in_features))
        grads = {"weight": d_gw, "bias": dgo.sum(1)}
        dgx = None
        if need_input_grad:
            w = p["weight"]
            dgx = torch.baddbmm(torch.bmm(go, dp["weight"]), dgo, w) if w.dim() == 3 else \
                torch.bmm(go, dp["weight"]) + torch.matmul(dgo, w)
            dgx = dgx.view(x.shape)
        return dgx, grads


class ReLU(Layer):
    def forward(self, p, x, batched):
        return torch.relu(x)

    has_vjp = True

    def vjp(self, p, x, out, grad_out, need_input_grad):
        # relu' is the 0/1 mask of the output: differentiable in grad_out, constant in x (a.e.);
        # threshold_backward is that product in one op (and is its own derivative in grad_out)
        return torch.ops.aten.threshold_backward(grad_out, out, 0), {}

    has_tangent = True

    def tangent(self, p, dp, x, dx, out):
        return torch.zeros_like(out) if dx is None else torch.ops.aten.threshold_backward(dx, out, 0)

    def vjp_tangent(self, p, dp, x, dx, out, grad_out, d_grad_out, need_input_grad):
        # gx = go * 1[out > 0]: the mask is locally constant, so only d_grad_out moves it
        return torch.ops.aten.threshold_backward(d_grad_out, out, 0), {}


class Flatten(Layer):
    """Flatten everything after ``[T, N]``."""

    def forward(self, p, x, batched):
        return x.flatten(2)

    has_vjp = True

    def vjp(self, p, x, out, grad_out, need_input_grad):
        return grad_out.reshape(x.shape), {}

    has_tangent = True

    def tangent(self, p, dp, x, dx, out):
        return torch.zeros_like(out) if dx is None else dx.flatten(2)

    def vjp_tangent(self, p, dp, x, dx, out, grad_out, d_grad_out, need_input_grad):
        return d_grad_out.reshape(x.shape), {}


class FunctionalNet:
    """Layers over one flat parameter buffer; ``head_from`` marks where the task head starts."""

    def __init__(self, layers: Sequence[Layer], *, head_from: int | None = None, out_dim: int) -> None:
        self.layers = list(layers)
        self.out_dim = out_dim
        self.head_from = len(self.layers) - 1 if head_from is None else head_from
        self.names: list[str] = []
        self.sizes: list[int] = []
        self.shapes: list[tuple[int, ...]] = []
        self._layer_ranges: list[tuple[int, int]] = []  # index range into names per layer
        self._offsets = [0]
        for i, layer in enumerate(self.layers):
            start = len(self.names)
            for pname, shape in layer.shapes:
                self.names.append(f"{i}.{pname}")
                self.shapes.append(tuple(shape))
                self.sizes.append(math.prod(shape))
                self._offsets.append(self._offsets[-1] + self.sizes[-1])
            self._layer_ranges.append((start, len(self.names)))
        self.num_params = self._offsets[-1]
        self._plans: dict[tuple[int, int], tuple] = {}

    # -- layout ----------------------------------------------------------------------------
    def offset(self, layer: int) -> int:
        """Flat offset of the first parameter of ``layer`` (``len(layers)`` gives P)."""
        if layer >= len(self.layers):
            return self.num_params
        return self._offsets[self._layer_ranges[layer][0]]

    @property
    def head_offset(self) -> int:
        return self.offset(self.head_from)

    def init_flat(self, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        parts = []
        for i, layer in enumerate(self.layers):
            for pname, shape in layer.shapes:
                parts.append(layer.init(pname, tuple(shape), generator, dtype).reshape(-1))
        return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)

    def _plan(self, start: int, end: int) -> tuple[int, list[int], list[list[tuple[str, tuple[int, ...]]]]]:
        """(entries, chunk sizes, per-layer (name, shape) lists) of layers ``start:end``, cached:
        views() runs on every forward of every inner step, so its Python work is kept to a split."""
        key = (start, end)
        plan = self._plans.get(key)
        if plan is None:
            first = self._layer_ranges[start][0] if start < len(self.layers) else len(self.names)
            last = self._layer_ranges[end - 1][1] if end > start else first
            per_layer = [[(self.names[j].split(".", 1)[1], self.shapes[j]) for j in range(*self._layer_ranges[i])]
                         for i in range(start, end)]
            plan = (self._offsets[last] - self._offsets[first], self.sizes[first:last], per_layer)
            self._plans[key] = plan
        return plan

    def views(self, flat: Tensor, start: int = 0, end: int | None = None) -> list[dict[str, Tensor]]:
        """Per-layer dicts of views into ``flat`` ([..., P_range]) for layers ``start:end``."""
        end = len(self.layers) if end is None else end
        expect, sizes, per_layer = self._plan(start, end)
        if flat.shape[-1] != expect:
            raise ValueError(f"flat parameters for layers {start}:{end} need {expect} entries, got {flat.shape[-1]}")
        lead = tuple(flat.shape[:-1])
        chunks = flat.split(sizes, dim=-1) if sizes else ()
        out: list[dict[str, Tensor]] = []
        k = 0
        for names in per_layer:
            d = {}
            for pname, shape in names:
                d[pname] = chunks[k].view(lead + shape)
                k += 1
            out.append(d)
        return out

    #: False when some layer normalises query examples with support statistics only; forwards
    #: over query examples must then include the support set and pass ``support_size``
    transductive = True

    def forward(self, flat: Tensor, x: Tensor, start: int = 0, end: int | None = None, *,
                support_size: int | None = None) -> Tensor:
        """Run layers ``start:end`` on ``x`` [T, N, ...] with parameters ``flat`` [P_range] or
        [T, P_range]; returns [T, N, ...].  ``support_size`` (the first S of the N examples are
        support) matters only to networks with normalisation layers."""
        end = len(self.layers) if end is None else end
        batched = flat.dim() == 2
        for layer, p in zip(self.layers[start:end], self.views(flat, start, end)):
            x = layer.forward(p, x, batched)
        return x

    def has_vjp(self, start: int = 0) -> bool:
        """Whether :meth:`loss_grad` can run layers ``start:`` without the autograd engine."""
        return all(layer.has_vjp for layer in self.layers[start:])

    def loss_grad(self, flat: Tensor, x: Tensor, y: Tensor, loss: str, start: int = 0) -> Tensor:
        """Per-task gradient [T, P_range] of the per-task mean ``loss`` (``mse`` or
        ``cross_entropy``) of layers ``start:`` with per-task parameters ``flat`` [T, P_range],
        or parameters [P_range] shared by all tasks (MAML's first inner step: every forward
        and input-gradient product is then one GEMM over all tasks instead of a batched one).

        The inner-loop gradient of MAML-style learners, written as explicit batched
        vector-Jacobian products instead of ``autograd.grad(create_graph=True)``: the same
        numbers, but a smaller graph for the second-order backward and no autograd-engine pass.
        Differentiable (to any order) in ``flat`` and ``x``.
        """
        return self.loss_grad_parts(flat, x, y, loss, start)[2]

    def loss_grad_parts(self, flat: Tensor, x: Tensor, y: Tensor, loss: str,
                        start: int = 0) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """:meth:`loss_grad` with what it passed through: (the activations [input, every layer's
        output], the gradient of the loss with respect to each of them, the parameter gradient
        [T, P_range]).  :meth:`loss_hvp` reuses them."""
        layers = self.layers[start:]
        views = self.views(flat, start)
        batched = flat.dim() == 2
        acts = [x]
        for layer, p in zip(layers, views):
            acts.append(layer.forward(p, acts[-1], batched))
        pred = acts[-1]
        t = pred.shape[0]
        if loss == "mse":
            g = (pred - y.reshape(pred.shape)) * (2.0 / pred[0].numel())
        elif loss == "cross_entropy":
            n = pred.shape[1]
            g = (torch.softmax(pred, -1) - torch.nn.functional.one_hot(y, pred.shape[-1]).to(pred.dtype)) / n
        else:
            raise ValueError(f"loss_grad: unknown loss {loss!r}")
        grads_out: list[Tensor] = [g] * len(acts)
        per_layer: list[dict[str, Tensor]] = [{} for _ in layers]
        for i in range(len(layers) - 1, -1, -1):
            g, per_layer[i] = layers[i].vjp(views[i], acts[i], acts[i + 1], g, need_input_grad=i > 0)
            if g is not None:
                grads_out[i] = g
        parts = [per_layer[i][pname].reshape(t, -1) for i, layer in enumerate(layers) for pname, _ in layer.shapes]
        return acts, grads_out, torch.cat(parts, 1)

    def has_tangent(self, start: int = 0) -> bool:
        """Whether :meth:`loss_hvp` can run layers ``start:`` (every layer has R-operators)."""
        return all(layer.has_tangent for layer in self.layers[start:])

    def loss_hvp(self, flat: Tensor, direction: Tensor, acts: Sequence[Tensor], grads_out: Sequence[Tensor],
                 loss: str, start: int = 0) -> Tensor:
        """Per-task Hessian-vector products [T, P_range] of the loss of :meth:`loss_grad_parts`
        (called with the same ``flat`` and returning ``acts``, ``grads_out``) with the per-task
        ``direction`` [T, P_range]: one forward and one backward pass of R-operators (Pearlmutter,
        Fast Exact Multiplication by the Hessian, 1994), no autograd graph.  Not differentiable."""
        layers = self.layers[start:]
        views = self.views(flat, start)
        dviews = self.views(direction, start)
        dacts: list[Tensor | None] = [None]
        for i, layer in enumerate(layers):
            dacts.append(layer.tangent(views[i], dviews[i], acts[i], dacts[i], acts[i + 1]))
        pred, dpred = acts[-1], dacts[-1]
        if loss == "mse":
            dg = dpred * (2.0 / pred[0].numel())
        elif loss == "cross_entropy":
            sm = torch.softmax(pred, -1)
            sd = sm * dpred
            dg = (sd - sm * sd.sum(-1, keepdim=True)) / pred.shape[1]
        else:
            raise ValueError(f"loss_hvp: unknown loss {loss!r}")
        t = direction.shape[0]
        per_layer: list[dict[str, Tensor]] = [{} for _ in layers]
        for i in range(len(layers) - 1, -1, -1):
            dg, per_layer[i] = layers[i].vjp_tangent(views[i], dviews[i], acts[i], dacts[i], acts[i + 1],
                                                     grads_out[i + 1], dg, need_input_grad=i > 0)
        parts = [per_layer[i][pname].reshape(t, -1) for i, layer in enumerate(layers) for pname, _ in layer.shapes]
        return torch.cat(parts, 1)

    def __call__(self, flat: Tensor, x: Tensor, start: int = 0, end: int | None = None, *,
                 support_size: int | None = None) -> Tensor:
        return self.forward(flat, x, start, end, support_size=support_size)
