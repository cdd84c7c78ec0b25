"""Fast weights: a slow network plus weights written from the support set in one forward pass.

Schmidhuber. Learning to Control Fast-Weight Memories. Neural Computation 1992; Ba, Hinton, Mnih,
Leibo, Ionescu. Using Fast Weights to Attend to the Recent Past. NeurIPS 2016; Munkhdalai, Yu.
Meta Networks. ICML 2017.

The slow network is the body of any registered backbone (every layer before its head) followed by
a linear key map and L2 normalisation: ``k(x) = u / |u|``, ``u = W_k f_theta(x) + b_k`` [D].  The
read-out has slow weights ``W`` [O, D], ``b`` [O] and, per task, fast weights ``A`` [O, D]:

    y_hat(x) = tau * (W + A) k(x) + b                                   (read: slow plus fast)

``A`` is written from the S support pairs (k_i, v_i), v_i the target's code (one-hot label or the
regression target), in ``write_iterations`` = L write-read iterations, each reading the support set
through the current weights and writing into them (Ba et al. eq. 1, A(t) = lambda A(t-1) +
eta h h^T, with the value replaced by the target code and one write per iteration for the whole
support set, which makes the write independent of the support order):

    A_0 = 0,   A_l = lambda * A_{l-1} + eta_l * (1/S) sum_i e_i^(l) k_i^T,   l = 1..L

with ``e_i = v_i`` (``write_rule="hebbian"``: the outer-product / Hebbian write) or
``e_i = v_i - sigma(y_hat^(l-1)(x_i))`` (``"delta"``: Widrow-Hoff's error-correcting write, sigma
the softmax for classification and the identity for regression; the delta rule of Schlag, Irie,
Schmidhuber, Linear Transformers Are Secretly Fast Weight Programmers, ICML 2021).  The gains
eta_l > 0 (one per iteration), the decay lambda in (0, 1) and the read temperature tau are learned
with the slow weights.  For the squared loss and for softmax cross-entropy the delta write is (up
to its scale) a gradient step on the fast weights of the linear read-out, written in closed form
inside the forward pass: nothing is
differentiated and nothing is optimised when the learner adapts to a task.  With the Hebbian rule
the iterations write the same matrix again, so only ``write_iterations=1`` makes sense for it.

``generator="metanet"`` replaces the summed outer products by a learned fast-weight generator in
the spirit of Meta Networks: each support example's meta-information is the closed-form negative
loss gradient of the read-out, G_i = e_i k_i^T (Meta Networks use loss gradients as the meta
information); a learned network g maps it to per-example fast weights W*_i = G_i + g(G_i, e_i, k_i),
applied coordinate-wise (an MLP on each (G_iod, e_io, k_id), its output layer starting at zero so
training starts from the outer-product write), kept in a memory keyed by k_i, and every example
reads its own fast weights by attention over that memory (Meta Networks' memory read):
A(x) = sum_i softmax_i(beta cos(k(x), k_i)) W*_i, with a learned beta.

Everything is batched over the T tasks of a meta-batch ([T, S, ...] tensors, no loop over tasks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import metareg

PAPER = ("Ba, Hinton, Mnih, Leibo, Ionescu. Using Fast Weights to Attend to the Recent Past. NeurIPS 2016; "
         "Schmidhuber. Learning to Control Fast-Weight Memories. Neural Computation 1992; "
         "Munkhdalai, Yu. Meta Networks. ICML 2017")


@metareg.config
class FastWeightsConfig:
    write_rule: Literal["delta", "hebbian"] = metareg.param(
        "delta", "what is written each iteration: 'delta' writes the support error e_i = v_i - sigma(y_hat(x_i)) "
                 "(Widrow-Hoff), 'hebbian' the target code itself, e_i = v_i; A_l = lambda A_(l-1) + eta_l mean_i e_i k_i^T")
    write_iterations: int = metareg.param(
        2, "write-read iterations L over the support set (each reads the support through W + A, then writes); "
           "more than 1 only changes anything with the delta rule", ge=1)
    generator: Literal["outer", "metanet"] = metareg.param(
        "outer", "'outer': one fast matrix per task, the mean of the outer products e_i k_i^T; 'metanet': a learned "
                 "coordinate-wise generator turns each G_i = e_i k_i^T into fast weights W*_i, read per example by "
                 "attention over the support keys (Meta Networks)")
    key_dim: int = metareg.param(64, "width D of the keys k(x) (the slow network's normalised linear key map)", ge=1)
    gain_init: float = metareg.param(1.0, "initial write gain eta_l of every iteration (learned, kept positive)", gt=0)
    decay_init: float = metareg.param(0.5, "initial decay lambda of the fast weights between iterations (learned, "
                                           "kept in (0, 1))", gt=0, lt=1)
    read_scale: float = metareg.param(0.0, "initial read temperature tau (learned); 0: 10 for classification (a "
                                           "cosine classifier's scale), 1 for regression", ge=0)
    generator_hidden: int = metareg.param(20, "hidden width of the metanet generator g (coordinate-wise MLP 3 -> H -> 1)",
                                          ge=1)
    attention_init: float = metareg.param(10.0, "initial inverse temperature beta of the metanet memory read (learned)",
                                          gt=0)
    backbone: str = metareg.param("", "slow network: this backbone's layers before its head; empty: the benchmark's default")


@metareg.algorithm(
    "fast_weights", kind="meta", family="model",
    summary="slow network + per-task fast weights written from the support set in one forward pass (delta or "
            "Hebbian outer-product write with learned gain and decay, L write-read iterations, optional Meta "
            "Networks generator); query read through slow plus fast weights, no gradient steps",
    paper=PAPER, config=FastWeightsConfig, requires={"episodic"})
class FastWeights(metareg.Learner):
    kind = "meta"
    step_adaptation = False
    capabilities = frozenset({"fast_weights", "amortized"})

    def __init__(self, config: FastWeightsConfig, context: metareg.LearnerContext) -> None:
        super().__init__(config, context)
        task, gen, dt, dev = context.task, context.generator, context.dtype, context.device
        self.classify = task.loss == "cross_entropy"
        self.out_dim = task.output_dim
        self.net = context.make_backbone(config.backbone or None)
        self.theta = nn.Parameter(self.net.init_flat(gen, dtype=dt)[: self.net.head_offset].clone())
        with torch.no_grad():
            probe = torch.zeros(1, 2, *task.input_shape, dtype=dt)
            feat = self._body(self.theta, probe, 2).shape[-1]
        d, o = config.key_dim, self.out_dim
        self.key_net = metareg.mlp((feat,), d, hidden=())
        self.key = nn.Parameter(self.key_net.init_flat(gen, dtype=dt))
        bound = 1.0 / math.sqrt(d)
        self.weight = nn.Parameter((torch.rand(o, d, generator=gen, dtype=dt) * 2 - 1) * bound)  # slow W
        self.bias = nn.Parameter(torch.zeros(o, dtype=dt))
        tau = config.read_scale or (10.0 if self.classify else 1.0)
        self.log_scale = nn.Parameter(torch.tensor(math.log(tau), dtype=dt))
        # eta_l = softplus(raw_l) > 0; lambda = sigmoid(raw) in (0, 1)
        self.gain_raw = nn.Parameter(torch.full((config.write_iterations,), _softplus_inv(config.gain_init), dtype=dt))
        self.decay_raw = nn.Parameter(torch.tensor(math.log(config.decay_init / (1 - config.decay_init)), dtype=dt))
        if config.generator == "metanet":
            self.gen_net = metareg.mlp((3,), 1, hidden=(config.generator_hidden,))
            flat = self.gen_net.init_flat(gen, dtype=dt)
            last = self.gen_net.offset(len(self.gen_net.layers) - 1)
            flat[last:] = 0.0  # g starts at zero: the write starts as the outer-product rule
            self.gen = nn.Parameter(flat)
            self.log_beta = nn.Parameter(torch.tensor(math.log(config.attention_init), dtype=dt))
        self.to(dev)

    # -- the slow network ----------------------------------------------------------------------
    def _body(self, theta: Tensor, x: Tensor, support_size: int) -> Tensor:
        return self.net.forward(theta, x, 0, self.net.head_from, support_size=support_size).flatten(2)

    def keys(self, x: Tensor, support_size: int) -> Tensor:
        """x [T, N, *in] -> unit keys [T, N, D]; the first ``support_size`` examples are the
        support set (for backbones that normalise with support statistics only)."""
        return F.normalize(self.key_net(self.key, self._body(self.theta, x, support_size)), dim=-1)

    def codes(self, y: Tensor) -> Tensor:
        """Target codes v [T, S, O]: one-hot labels, or the regression targets."""
        return metareg.one_hot(y, self.out_dim, self.weight.dtype) if self.classify else y.reshape(*y.shape[:2], -1)

    def _act(self, pred: Tensor) -> Tensor:
        return torch.softmax(pred, -1) if self.classify else pred

    def gains(self) -> Tensor:
        return F.softplus(self.gain_raw)

    def decay(self) -> Tensor:
        return torch.sigmoid(self.decay_raw)

    # -- write and read -------------------------------------------------------------------------
    def write(self, ks: Tensor, v: Tensor) -> Tensor:
        """The outer-product rule: support keys [T, S, D] and codes [T, S, O] -> fast weights
        A_L [T, O, D]."""
        s = ks.shape[1]
        eta, lam, tau = self.gains(), self.decay(), self.log_scale.exp()
        fast = None
        for step in range(self.config.write_iterations):
            e = v
            if self.config.write_rule == "delta":
                w = self.weight if fast is None else self.weight + fast  # [O, D] or [T, O, D]
                pred = tau * (ks @ w.transpose(-1, -2)) + self.bias
                e = v - self._act(pred)
            u = e.transpose(1, 2) @ ks / s  # [T, O, D]: the mean outer product e_i k_i^T
            fast = eta[step] * u if fast is None else lam * fast + eta[step] * u
        return fast

    def read(self, k: Tensor, fast: Tensor) -> Tensor:
        """y_hat = tau (W + A) k + b: keys [T, N, D], fast weights [T, O, D] -> [T, N, O]."""
        return self.log_scale.exp() * (k @ (self.weight + fast).transpose(1, 2)) + self.bias

    def _generated(self, e: Tensor, ks: Tensor) -> Tensor:
        """Meta Networks' per-example fast weights W*_i = G_i + g(G_i, e_i, k_i) [T, S, O, D]."""
        t, s, o = e.shape
        d = ks.shape[-1]
        ee = e.unsqueeze(-1).expand(t, s, o, d)
        kk = ks.unsqueeze(2).expand(t, s, o, d)
        grad = ee * kk  # G_i = e_i k_i^T
        inp = torch.stack([grad, ee, kk], -1).reshape(t, s * o * d, 3)
        return grad + self.gen_net(self.gen, inp).view(t, s, o, d)

    def metanet_predict(self, ks: Tensor, kq: Tensor, v: Tensor) -> Tensor:
        """The Meta Networks generator: every example x reads A(x) = sum_i a_i(x) W*_i; only the
        fast part of the read, f(x) = A(x) k(x), is tracked (it is linear in the memory, so the
        decay and gains apply to it directly and no [T, N, O, D] tensor is built)."""
        eta, lam, tau, beta = self.gains(), self.decay(), self.log_scale.exp(), self.log_beta.exp()
        att_s = torch.softmax(beta * ks @ ks.transpose(1, 2), -1)  # [T, S, S]: reader x support key
        att_q = torch.softmax(beta * kq @ ks.transpose(1, 2), -1)  # [T, Q, S]
        f_s = f_q = None
        slow_s = ks @ self.weight.t()
        for step in range(self.config.write_iterations):
            e = v
            if self.config.write_rule == "delta":
                pred = tau * (slow_s if f_s is None else slow_s + f_s) + self.bias
                e = v - self._act(pred)
            w_star = self._generated(e, ks)  # [T, S, O, D]
            # r(x) = sum_i a_i(x) W*_i k(x): W*_i k(x) for every reader x and memory slot i
            r_s = (att_s.unsqueeze(-1) * torch.einsum("tiod,tjd->tjio", w_star, ks)).sum(2)
            r_q = (att_q.unsqueeze(-1) * torch.einsum("tiod,tjd->tjio", w_star, kq)).sum(2)
            f_s = eta[step] * r_s if f_s is None else lam * f_s + eta[step] * r_s
            f_q = eta[step] * r_q if f_q is None else lam * f_q + eta[step] * r_q
        return tau * (kq @ self.weight.t() + f_q) + self.bias

    def predict(self, batch: metareg.TaskBatch) -> Tensor:
        """Query predictions [T, Q, O] (logits or regression values) after writing the support set."""
        s = batch.support_x.shape[1]
        # support and query in one forward: fewer launches, the same per-task statistics
        k = self.keys(torch.cat([batch.support_x, batch.query_x], 1), s)
        ks, kq = k[:, :s], k[:, s:]
        v = self.codes(batch.support_y)
        if self.config.generator == "metanet":
            return self.metanet_predict(ks, kq, v)
        return self.read(kq, self.write(ks, v))

    # -- the learner protocol -------------------------------------------------------------------
    def step(self, batch: metareg.TaskBatch) -> dict[str, float]:
        pred = self.predict(batch)
        loss = self.losses(pred, batch.query_y).mean()
        loss.backward()
        out = {"loss": loss.item()}
        if self.classify:
            out["accuracy"] = (pred.argmax(-1) == batch.query_y).float().mean().item()
        return out

    @torch.no_grad()
    def adapt_predict(self, batch: metareg.TaskBatch, steps: Sequence[int]) -> dict[int, Tensor]:
        pred = self.predict(batch)
        return {k: pred for k in steps}


def _softplus_inv(x: float) -> float:
    return x + math.log(-math.expm1(-x))


@metareg.hookimpl
def register_algorithms(register):
    register(FastWeights)
