"""Optimization-based meta-learners over one flat fast-weight buffer.

:class:`GradientMetaLearner` implements the inner loop once for MAML, first-order MAML, Meta-SGD,
ANIL and Reptile.  The meta-parameters are a single flat vector ``theta`` [P]; the fast weights of
the T tasks of a meta-batch are one [T, P] tensor, every forward is batched over tasks (no Python
loop), and every inner update is one call of :meth:`inner_update`, whose default is the fused op
:func:`metareg.ops.task_step` (one launch for all tasks and all parameter tensors).

Subclasses choose what is adapted (``adapt_from_layer``: 0 = the whole network, ANIL = the head),
the inner learning rate (:meth:`inner_lr`, Meta-SGD learns it) and how the meta-gradient is formed
(:meth:`step`, Reptile overrides it).

The T tasks of a meta-batch can be treated as a multi-task problem (``combiner``: per-task
meta-gradients [T, P] aggregated by PCGrad, MGDA, ...; ``adversarial``: a task discriminator on the
encoder behind gradient reversal); see :mod:`metareg.learners.meta_batch`.  With the defaults the
step is the plain meta-gradient of the mean query loss, computed as before.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .. import ops
from ..config import config, param
from ..errors import IncompatibleError
from ..nets.functional import differentiated_once
from ..tasks.base import TaskBatch, task_losses
from .base import (TASK_PARALLEL_HELP, Learner, LearnerContext, accumulate_chunks, accumulate_grad, backbone_chunk,
                   task_parallel_on, task_parallel_workers)
from .meta_batch import MetaBatchObjective

__all__ = ["GradientMetaLearner", "GradientMetaConfig"]


@config
class GradientMetaConfig:
    inner_lr: float = param(0.01, "inner-loop (adaptation) learning rate alpha", gt=0)
    inner_steps: int = param(1, "inner-loop gradient steps during meta-training (second order keeps every step's "
                                "graph, so memory grows with it, unless recompute=true)", ge=1, le=10_000)
    first_order: bool = param(False, "drop second-order terms (first-order MAML)")
    backbone: str = param("", "backbone name (see `metareg list`); empty: the benchmark's default")
    combiner: str = param("equal", "how the per-task meta-gradients of a meta-batch are combined: 'equal' (their mean, "
                                   "the plain meta-gradient) or a multi-task combiner (pcgrad, mgda, cagrad, upgrad, "
                                   "nash_mtl, gradvac, gradnorm ...; options as combiner.KEY=VALUE)")
    adversarial: float = param(0.0, "weight of a task discriminator on the encoder's features trained through "
                                    "gradient reversal (0: off); needs training tasks with ids", ge=0)
    recompute: bool = param(False, "second order: keep only each inner step's fast weights [T, P] and recompute the "
                                   "step's graph in the backward pass (peak memory flat in inner_steps, the same "
                                   "meta-gradient, about one more support forward and gradient per step); where the "
                                   "backbone splits the meta-batch into chunks anyway (conv4/resnet12 on CPU) and "
                                   "task_chunk is 0, the step also runs one such chunk at a time")
    task_chunk: int = param(0, "run the meta-batch this many tasks at a time, each chunk's share of the loss "
                               "backpropagated before the next (the same meta-gradient; peak memory of one chunk "
                               "instead of the whole meta-batch; 0: all at once)", ge=0)
    task_parallel: bool = param(True, TASK_PARALLEL_HELP)
    compile: bool = param(False, "run the closed-form meta-gradient (MLP backbones, plain mean objective, "
                                 "whole-network adaptation) through torch.compile instead of its C++ op: ~15% faster "
                                 "steps on sinusoid after a one-off compilation of 5-45 s (inductor; needs a C++ "
                                 "compiler on CPU); elsewhere ignored with a warning")


class GradientMetaLearner(Learner):
    kind = "meta"
    capabilities = frozenset({"second_order", "first_order", "fast_weights"})
    #: index of the first layer adapted in the inner loop (0: all of them)
    adapt_from_layer: int = 0
    #: form the plain meta-gradient in closed form (:func:`explicit_meta_gradient`) wherever the
    #: network and the configuration allow it; False: always through the autograd engine
    explicit_meta_gradient: bool = True

    def __init__(self, config, context: LearnerContext) -> None:
        super().__init__(config, context)
        self.net = context.make_backbone(config.backbone or None)
        self.theta = nn.Parameter(self.net.init_flat(context.generator, dtype=context.dtype).to(context.device))
        self.split = self.net.offset(self.adapt_from_layer)
        feature_dim = None
        if getattr(config, "adversarial", 0.0) > 0:
            with torch.no_grad():
                probe = torch.zeros(1, 2, *context.task.input_shape, dtype=context.dtype, device=context.device)
                feature_dim = self.net.forward(self.theta[: self.net.head_offset], probe, 0, self.net.head_from,
                                               support_size=2).flatten(2).shape[-1]
        self.meta_objective = MetaBatchObjective(config, context, feature_dim)
        #: threads that ran the last step's chunks of tasks (1: the caller's thread; summary.json)
        self.step_workers = 1
        if getattr(config, "task_chunk", 0) and (not self.meta_objective.plain or self.meta_objective.adversarial):
            raise IncompatibleError(f"task_chunk runs the plain mean of the task losses chunk by chunk; combiner "
                                    f"'{config.combiner}' and adversarial > 0 need the whole meta-batch at once: "
                                    "drop task_chunk or them.")

    @functools.cached_property
    def _vjp(self) -> bool:
        # fixed once the backbone and the adapted range are (cached: read on every inner step)
        return self.net.transductive and self.net.has_vjp(self.adapt_from_layer)

    @functools.cached_property
    def _explicit(self) -> bool:
        """Whether :meth:`step` may use :func:`explicit_meta_gradient`: the whole network is
        adapted, every layer has R-operators, the objective is the plain mean of the task losses,
        neither ``recompute`` nor ``task_chunk`` is set, and no subclass changed a piece of the
        inner loop or the loss (it would be bypassed)."""
        cls = type(self)
        pieces = ("inner_update", "support_grad", "inner_loop", "predict", "predict_query", "features", "losses")
        changed = any(getattr(cls, name) is not getattr(GradientMetaLearner, name) for name in pieces)
        mo = self.meta_objective
        # recompute and task_chunk choose how the autograd graph is held: they keep their own path
        own_path = getattr(self.config, "recompute", False) or getattr(self.config, "task_chunk", 0)
        return (self.explicit_meta_gradient and not changed and not own_path and self.adapt_from_layer == 0
                and self._vjp and self.net.has_tangent(0) and mo.plain and not mo.adversarial
                and not mo.needs_jacobian)

    # -- the pieces subclasses override ------------------------------------------------------
    def inner_lr(self) -> float | Tensor:
        """Learning rate of the inner update: a float, or a [P_adapted] tensor (Meta-SGD)."""
        return self.config.inner_lr

    def inner_update(self, fast: Tensor, grads: Tensor, lr: float | Tensor) -> Tensor:
        """fast [P_a] or [T, P_a], grads [T, P_a] -> [T, P_a]: one op for every task and tensor."""
        return ops.task_step(fast, grads, lr)

    # -- network pieces ----------------------------------------------------------------------
    def _adapted(self, theta: Tensor) -> Tensor:
        """The adapted part of theta [P] (or of per-task rows [T, P])."""
        # a full-range slice would still put a SliceBackward (zeros + copy of [P]) on the graph
        return theta if self.split == 0 else theta[..., self.split:]

    def features(self, theta: Tensor, support_x: Tensor, query_x: Tensor) -> tuple[Tensor, Tensor]:
        """The part of the network that is not adapted (shared by all tasks), on the support and
        query inputs; identity for MAML.  ``theta`` [P], or per-task rows [T, P]."""
        if self.adapt_from_layer == 0:
            return support_x, query_x
        body = theta[..., : self.split]
        s = support_x.shape[1]
        feats_s = self.net.forward(body, support_x, 0, self.adapt_from_layer, support_size=s)
        if self.net.transductive:
            feats_q = self.net.forward(body, query_x, 0, self.adapt_from_layer)
        else:
            both = self.net.forward(body, torch.cat([support_x, query_x], 1), 0, self.adapt_from_layer, support_size=s)
            feats_q = both[:, s:]
        return feats_s, feats_q

    def predict(self, fast: Tensor, feats: Tensor) -> Tensor:
        """Predictions on the support set itself (the inner-loop loss)."""
        return self.net.forward(fast, feats, self.adapt_from_layer, support_size=feats.shape[1])

    def predict_query(self, fast: Tensor, feats_s: Tensor, feats_q: Tensor) -> Tensor:
        """Predictions on the query set; with non-transductive normalisation the support set
        rides along so the statistics come from it alone."""
        if self.net.transductive:
            return self.net.forward(fast, feats_q, self.adapt_from_layer)
        s = feats_s.shape[1]
        both = self.net.forward(fast, torch.cat([feats_s, feats_q], 1), self.adapt_from_layer, support_size=s)
        return both[:, s:]

    # -- inner loop --------------------------------------------------------------------------
    def support_grad(self, p: Tensor, feats: Tensor, y: Tensor, create_graph: bool) -> Tensor:
        """Per-task gradient [T, P_a] of the support loss at fast weights ``p`` [T, P_a]."""
        if self._vjp:
            # explicit batched VJPs: same values as autograd, a leaner second-order graph
            if create_graph:
                return self.net.loss_grad(p, feats, y, self.task.loss, self.adapt_from_layer)
            with torch.no_grad():
                return self.net.loss_grad(p.detach(), feats.detach(), y, self.task.loss, self.adapt_from_layer)
        loss = self.losses(self.predict(p, feats), y).sum()  # sum: tasks are independent
        (g,) = torch.autograd.grad(loss, p, create_graph=create_graph)
        return g

    def inner_loop(self, fast: Tensor, feats: Tensor, y: Tensor, steps: int, *, create_graph: bool,
              lr: float | Tensor | None = None, keep: Sequence[int] = ()) -> tuple[Tensor, dict[int, Tensor]]:
        """``steps`` inner updates from ``fast`` ([P_a] shared start, or [T, P_a]) on the support
        set; returns the final [T, P_a] fast weights and those after each step count in ``keep``.

        With ``create_graph`` the result is differentiable to second order in ``fast`` (and a
        learned ``lr``); without it, gradients are treated as constants (first-order MAML), but
        the update itself stays on the graph, so the meta-gradient still flows through the
        identity path.
        """
        lr = self.inner_lr() if lr is None else lr
        t = feats.shape[0]
        kept: dict[int, Tensor] = {}
        recompute = create_graph and getattr(self.config, "recompute", False) and torch.is_grad_enabled()
        for k in range(1, steps + 1):
            if recompute:
                fast = _RecomputedStep.apply(self, fast, feats, y, lr if isinstance(lr, Tensor) else None, lr)
                if k in keep:
                    kept[k] = fast
                continue
            # the VJP path takes the shared start [P_a] as it is; autograd needs one row per task
            p = fast if fast.dim() == 2 or self._vjp else fast.expand(t, -1)
            if not p.requires_grad and not self._vjp:  # autograd.grad needs a graph to start from
                p = p.detach().requires_grad_()
                fast = p
            g = self.support_grad(p, feats, y, create_graph)
            fast = self.inner_update(fast, g, lr)
            if k in keep:
                kept[k] = fast
        if fast.dim() == 1:  # steps == 0
            fast = fast.expand(t, -1)
        return fast, kept

    # -- training and evaluation -------------------------------------------------------------
    def encoder_features(self, theta: Tensor, batch: TaskBatch, feats_s: Tensor, feats_q: Tensor) -> Tensor:
        """Features [T, S+Q, F] of the layers before the head (the encoder) at the meta-parameters
        ``theta`` [P] on every support and query example (what the task discriminator reads):
        the shared body's features when the body is the encoder (ANIL), else one more forward."""
        if self.adapt_from_layer == self.net.head_from:
            return torch.cat([feats_s, feats_q], 1)
        s = batch.support_x.shape[1]
        x = torch.cat([batch.support_x, batch.query_x], 1)
        return self.net.forward(theta[..., : self.net.head_offset], x, 0, self.net.head_from, support_size=s)

    def step(self, batch: TaskBatch) -> dict[str, float]:
        if self._explicit:
            lr = self.inner_lr()
            if not isinstance(lr, Tensor) or lr.is_leaf:
                return self._explicit_step(batch, lr)
        if getattr(self.config, "compile", False) and not self.__dict__.get("_compile_warned"):
            self.__dict__["_compile_warned"] = True
            warnings.warn(f"{type(self).__name__}: compile=true ignored: it compiles the closed-form meta-gradient, "
                          "which needs an MLP backbone (every layer with R-operators), combiner=equal, adversarial=0 "
                          "and whole-network adaptation; this step runs through autograd.", stacklevel=2)
        chunk = getattr(self.config, "task_chunk", 0) or self._backbone_chunk(batch)
        if chunk and chunk < batch.num_tasks:
            return self._chunked_step(batch, chunk)
        mb = self.meta_objective
        # per-task meta-gradients: the meta-batch runs from T copies of theta (one backward gives
        # row t = dL_t/dtheta); otherwise from theta itself, as the plain meta-gradient always did
        rows = mb.task_rows(self.theta, batch.num_tasks) if mb.needs_jacobian else None
        theta = self.theta if rows is None else rows
        # the frozen body's features (ANIL) and the query pass are differentiated once (the
        # second-order terms come from the inner steps' support graphs, which run outside): the
        # backbone may use kernels without second derivatives there
        once = differentiated_once if rows is None and mb.plain else contextlib.nullcontext
        with once():
            feats_s, feats_q = self.features(theta, batch.support_x, batch.query_x)
        fast, _ = self.inner_loop(self._adapted(theta), feats_s, batch.support_y, self.config.inner_steps,
                             create_graph=not self.config.first_order)
        with once():
            query_losses = self.losses(self.predict_query(fast, feats_s, feats_q), batch.query_y)
        extra, out = None, {}
        if mb.adversarial:
            extra, out = mb.adversarial_loss(self.encoder_features(theta, batch, feats_s, feats_q), batch.task_ids)
        if rows is not None:
            out.update(mb.backward(self.theta, rows, query_losses, self.parameters(), extra, batch.task_ids))
            return {"loss": query_losses.detach().mean().item(), **out}
        meta_loss = mb.loss(query_losses, batch.task_ids)
        (meta_loss if extra is None else meta_loss + extra).backward()
        return {"loss": meta_loss.item() if mb.plain else query_losses.detach().mean().item(), **out}

    @functools.cached_property
    def _mlp_widths(self) -> list[int] | None:
        """[in, h..., out] when the network is a plain ReLU MLP (an optional Flatten, then Linear
        and ReLU layers alternating, ending in a Linear): the layout of ``metareg.ops.mlp_meta_grad``."""
        from ..nets.functional import Flatten, Linear, ReLU

        layers = self.net.layers[1:] if self.net.layers and type(self.net.layers[0]) is Flatten else self.net.layers
        if len(layers) % 2 != 1:
            return None
        for i, layer in enumerate(layers):
            if type(layer) is not (Linear if i % 2 == 0 else ReLU):
                return None
        linears = layers[::2]
        if any(a.out_features != b.in_features for a, b in zip(linears, linears[1:])):
            return None
        return [linears[0].in_features] + [layer.out_features for layer in linears]

    def _explicit_step(self, batch: TaskBatch, lr: float | Tensor) -> dict[str, float]:
        learn_lr = isinstance(lr, Tensor) and lr.requires_grad
        fn = self._compiled_meta_gradient(learn_lr) if getattr(self.config, "compile", False) else None
        widths = self._mlp_widths if fn is None else None
        with torch.no_grad():
            if widths is not None and ops._compiled("mlp_meta_grad", self.theta):
                # the same closed form as one C++ op (no interpreter between its ~150 ATen calls)
                sx, qx = batch.support_x.flatten(2), batch.query_x.flatten(2)
                losses, d_theta, d_lr = ops.mlp_meta_grad(
                    self.theta.detach(), widths, sx, batch.support_y, qx, batch.query_y, _detached(lr),
                    self.config.inner_steps, loss=self.task.loss, first_order=self.config.first_order,
                    lr_grad=learn_lr)
            elif fn is not None:
                losses, d_theta, d_lr = fn(self.theta.detach(), batch.support_x, batch.support_y, batch.query_x,
                                           batch.query_y, _detached(lr))
            else:
                losses, d_theta, d_lr = explicit_meta_gradient(
                    self.net, self.theta.detach(), batch.support_x, batch.support_y, batch.query_x, batch.query_y,
                    self.task.loss, _detached(lr), self.config.inner_steps, first_order=self.config.first_order,
                    lr_grad=learn_lr)
            accumulate_grad(self.theta, d_theta)
            if learn_lr:
                accumulate_grad(lr, d_lr)
        return {"loss": losses.mean().item()}

    def _compiled_meta_gradient(self, learn_lr: bool):
        """:func:`explicit_meta_gradient` for this learner's network and settings through
        torch.compile (built on the first call; a new input shape compiles once more)."""
        fn = self.__dict__.get("_compiled_fn")
        if fn is None:
            net, loss, steps, first_order = self.net, self.task.loss, self.config.inner_steps, self.config.first_order

            def meta_gradient(theta, support_x, support_y, query_x, query_y, lr):
                return explicit_meta_gradient(net, theta, support_x, support_y, query_x, query_y, loss, lr, steps,
                                              first_order=first_order, lr_grad=learn_lr)

            fn = self.__dict__["_compiled_fn"] = torch.compile(meta_gradient, fullgraph=True, dynamic=False)
        return fn

    def _task_workers(self, batch: TaskBatch) -> int:
        return task_parallel_workers(self.config, batch)

    def _parallel_chunk(self, batch: TaskBatch) -> int:
        """Tasks per chunk of ``task_parallel`` (:func:`~metareg.learners.base.backbone_chunk` of
        the query set); 0 (no chunks) where the backbone takes the whole meta-batch, on other
        devices, or with ``task_parallel=false``."""
        return backbone_chunk(self.net, batch.query_x) if task_parallel_on(self.config, batch) else 0

    def _backbone_chunk(self, batch: TaskBatch) -> int:
        """Tasks per chunk of a step without ``task_chunk``: :meth:`_parallel_chunk`, and the same
        chunk with ``recompute`` (then the query graph is one chunk's as well as the inner steps';
        recompute alone would still hold every task's query activations); 0 (the whole
        meta-batch) elsewhere, and for objectives that need every task at once."""
        mo = self.meta_objective
        if not mo.plain or mo.adversarial or mo.needs_jacobian:
            return 0
        if getattr(self.config, "recompute", False) and not self.config.first_order:
            return backbone_chunk(self.net, batch.query_x)
        return self._parallel_chunk(batch)

    def _chunked_step(self, batch: TaskBatch, chunk: int) -> dict[str, float]:
        """The plain meta-gradient ``chunk`` tasks at a time: the tasks are independent, so the
        chunks' gradients of their share of the mean loss sum to the meta-batch's.  One chunk's
        graph is alive at a time, or one per worker with ``task_parallel`` (chunks run as workers
        free up; their gradients are summed in the chunks' order, whatever order they ran in)."""
        t = batch.num_tasks
        params = [p for p in self.parameters() if p.requires_grad]

        def chunk_gradient(start: int) -> tuple[tuple[Tensor | None, ...], Tensor]:
            part = batch.slice(start, start + chunk)
            with differentiated_once():  # as in step: the body's features are differentiated once
                feats_s, feats_q = self.features(self.theta, part.support_x, part.query_x)
            fast, _ = self.inner_loop(self._adapted(self.theta), feats_s, part.support_y, self.config.inner_steps,
                                      create_graph=not self.config.first_order)
            with differentiated_once():  # and so is the query pass
                losses = self.losses(self.predict_query(fast, feats_s, feats_q), part.query_y)
            grads = torch.autograd.grad(losses.sum() / t, params, allow_unused=True)
            return grads, losses.detach().sum()

        self.step_workers = self._task_workers(batch)
        losses = accumulate_chunks(params, chunk_gradient, range(0, t, chunk), self.step_workers)
        return {"loss": (sum(loss for (loss,) in losses) / t).item()}

    def adapt_predict(self, batch: TaskBatch, steps: Sequence[int]) -> dict[int, Tensor]:
        with torch.enable_grad():
            theta = self.theta.detach()
            with torch.no_grad():
                feats_s, feats_q = self.features(theta, batch.support_x, batch.query_x)
            wanted = sorted(set(steps))
            _, kept = self.inner_loop(self._adapted(theta), feats_s, batch.support_y, max(wanted), create_graph=False,
                                 lr=_detached(self.inner_lr()), keep=[k for k in wanted if k > 0])
            out = {}
            with torch.no_grad():
                for k in wanted:
                    fast = self._adapted(theta) if k == 0 else kept[k].detach()
                    out[k] = self.predict_query(fast, feats_s, feats_q)
            return out


def explicit_meta_gradient(net, theta: Tensor, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                           query_y: Tensor, loss: str, lr: float | Tensor, steps: int, *, first_order: bool = False,
                           lr_grad: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """MAML's meta-gradient in closed form: (query losses [T], d mean loss / d theta [P],
    d mean loss / d lr [P] when ``lr_grad`` else None), with no autograd graph.

    The inner loop theta_{k+1} = theta_k - lr * g_k (g_k the support-loss gradient of each task at
    theta_k, theta_0 = theta shared by all tasks) runs forward, keeping each step's activations;
    then v = d L_query / d theta_K is carried back through the steps,
    v <- v - H_k (lr * v), with H_k the support loss's Hessian at theta_k, applied as a
    Hessian-vector product of R-operators (:meth:`FunctionalNet.loss_hvp`: one forward and one
    backward pass of the network, batched over tasks).  ``first_order`` drops the Hessian terms
    (first-order MAML).  A learned ``lr`` (Meta-SGD) gets d L / d lr = -sum_k g_k * v_{k+1}.
    The same numbers as differentiating the unrolled loop with autograd (float64 tests), without
    the autograd engine's graph and nodes.  ``metareg.ops.mlp_meta_grad`` is this function for
    ReLU MLPs as one C++ op (the default there); this one serves other layer stacks with
    R-operators, builds without the extension, and ``compile=true``.
    """
    t = support_x.shape[0]
    trajectory = []
    p = theta
    for _ in range(steps):
        acts, grads_out, g = net.loss_grad_parts(p, support_x, support_y, loss)
        trajectory.append((p, acts, grads_out, g))
        p = ops.task_step(p, g, lr)
    acts, _, v = net.loss_grad_parts(p, query_x, query_y, loss)
    losses = task_losses(acts[-1], query_y, loss)
    d_lr = None
    for p_k, acts_k, grads_k, g_k in reversed(trajectory):
        if lr_grad:
            d = (g_k * v).sum(0).neg_()
            d_lr = d if d_lr is None else d_lr + d
        if not first_order:
            v = v - net.loss_hvp(p_k, v * lr, acts_k, grads_k, loss)
    return losses, v.sum(0) / t, None if d_lr is None else d_lr / t


def _detached(lr: float | Tensor) -> float | Tensor:
    return lr.detach() if isinstance(lr, Tensor) else lr


def _inner_step(learner: GradientMetaLearner, fast: Tensor, feats: Tensor, y: Tensor, lr: float | Tensor,
                create_graph: bool) -> Tensor:
    """One step of :meth:`GradientMetaLearner.inner_loop` (the same pieces: support_grad, inner_update)."""
    p = fast if fast.dim() == 2 or learner._vjp else fast.expand(feats.shape[0], -1)
    if not p.requires_grad and not learner._vjp:
        p = p.detach().requires_grad_()
        fast = p
    return learner.inner_update(fast, learner.support_grad(p, feats, y, create_graph), lr)


class _RecomputedStep(torch.autograd.Function):
    """One second-order inner step whose graph is not kept (``recompute``).

    Forward: the step without a graph; only its inputs (fast weights [P_a] or [T, P_a], the
    shared features, labels, a learned rate) are saved.  Backward: the step is run again with
    ``create_graph`` (support forward, its gradient, the update) and differentiated at once, so
    the backward of a K-step inner loop holds one step's graph at a time instead of K.  The
    numbers are those of the stored path: the same ops on the same inputs.

    Why not ``torch.utils.checkpoint``: the step calls ``autograd.grad`` inside, which unpacks the
    checkpointed saved tensors during the forward itself and so recomputes every step twice there
    (three support passes per step instead of two).  The backward is not itself differentiable
    (no third order).
    """

    @staticmethod
    def forward(ctx, learner, fast, feats, y, lr_t, lr):
        ctx.learner, ctx.lr = learner, lr
        ctx.save_for_backward(fast, feats, y, lr_t)
        with torch.enable_grad():  # the autograd path needs a (throw-away) graph for the gradient
            out = _inner_step(learner, fast.detach(), feats.detach(), y, lr if lr_t is None else lr_t.detach(), False)
        return out.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        fast, feats, y, lr_t = ctx.saved_tensors
        need = ctx.needs_input_grad
        with torch.enable_grad():
            fast = fast.detach().requires_grad_()
            feats = feats.detach().requires_grad_(need[2])
            lr = ctx.lr if lr_t is None else lr_t.detach().requires_grad_(need[4])
            out = _inner_step(ctx.learner, fast, feats, y, lr, True)
            wanted = [(i, x) for i, x in ((1, fast), (2, feats), (4, lr)) if need[i]]
            grads = torch.autograd.grad(out, [x for _, x in wanted], grad_out, allow_unused=True)
        result: list[Tensor | None] = [None] * 6
        for (i, _), g in zip(wanted, grads):
            result[i] = g
        return tuple(result)
