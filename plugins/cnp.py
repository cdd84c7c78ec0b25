"""Conditional Neural Processes.

Garnelo, Rosenbaum, Maddison, Ramalho, Saxton, Shanahan, Teh, Rezende, Eslami. Conditional Neural
Processes. ICML 2018.  Section 2.4: an encoder h embeds each observation, r_i = h((x_i, y_i))
(eq. 1); a commutative aggregation makes one representation of the whole context,
r = r_1 (+) ... (+) r_n, here the mean (eq. 2), so the prediction cannot depend on the order of
the support set; a decoder g conditions on r at each target, phi_j = g(x_j, r) (eq. 3).

* Regression: phi_j = (mu_j, sigma_j), the mean and standard deviation of a Gaussian over y_j, and
  the model is trained by the negative Gaussian log-likelihood of the query targets (eq. 4):
  -log N(y_j; mu_j, sigma_j^2).  sigma = min_std + (1 - min_std) * softplus(.) keeps the variance
  away from 0 (the bound of the authors' released code and of Le et al., Empirical Evaluation of
  Neural Process Objectives, 2018).  Evaluation scores the mean (``mse``); the per-task negative
  log-likelihood is :meth:`CNP.eval_metrics` (``nll``).
* Classification (the paper's one-shot Omniglot experiment): the observations are (image, label)
  pairs; r_i is aggregated per class, r_c = mean over the support examples of class c, and the
  decoder scores each class from the query and that class's
  representation, logit_c(x) = g(x, r_c) with one g shared by all classes (so relabelling the
  classes permutes the logits alike); trained by cross-entropy.  By default g's last layer is
  generated from r_c, logit_c(x) = w(r_c) . phi(f(x)) + b(r_c) with w, b linear in r_c and phi an
  MLP: the amortised classifier head of VERSA (Gordon et al., ICLR 2019) and CNAPs (Requeima et
  al., NeurIPS 2019), both CNP-style models.  The paper's decoder, an MLP on [f(x), r_c]
  (``conditioning="concat"``, the default for regression), learns the comparison of a query with
  a class at least twice as slowly on glyphs at budgets of minutes (benchmarks/RESULTS.md).

Inputs reach h and g through a slow embedding x -> f_theta(x), the body of any registered
backbone (Conv4 on images; on sinusoid the MLP's two hidden layers), learned with h and g.
Everything is batched over the T tasks of a meta-batch ([T, S, ...] tensors).  Adapting to a new
task is one forward pass: no gradient steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import metareg

PAPER = ("Garnelo, Rosenbaum, Maddison, Ramalho, Saxton, Shanahan, Teh, Rezende, Eslami. "
         "Conditional Neural Processes. ICML 2018")

_LOG_2PI = math.log(2 * math.pi)


@metareg.config
class CNPConfig:
    encoder_hidden: tuple[int, ...] = metareg.param(
        (128, 128), "hidden widths of the encoder h over (f(x_i), y_i) pairs (ReLU; the paper: 3 layers of 128)")
    rep_dim: int = metareg.param(128, "width of each r_i and of the aggregate r (mean over the support set, or per "
                                      "class for classification)", ge=1)
    decoder_hidden: tuple[int, ...] = metareg.param(
        (128, 128), "hidden widths of the decoder g over (f(x), r) (ReLU); it outputs (mu, sigma) per target "
                    "dimension for regression, one logit per class for classification")
    conditioning: Literal["auto", "concat", "weights"] = metareg.param(
        "auto", "how the decoder g(x, r) sees r: 'concat' runs an MLP on [f(x), r] (the paper); 'weights' generates "
                "the last layer of g from r, g = W(r) phi(f(x)) + b(r), phi an MLP (VERSA / CNAPs' amortised "
                "classifier head); 'auto': concat for regression, weights for classification (on glyphs the concat "
                "decoder learns the query-class comparison at least twice as slowly)")
    min_std: float = metareg.param(0.1, "regression: sigma = min_std + (1 - min_std) * softplus(raw), a floor on the "
                                        "predicted standard deviation", ge=0, lt=1)
    backbone: str = metareg.param("", "embedding f(x) of the inputs: this backbone's layers before its head; empty: "
                                      "the benchmark's default")

    def __post_init__(self) -> None:
        for name in ("encoder_hidden", "decoder_hidden"):
            if any(int(w) < 1 for w in getattr(self, name)):
                raise metareg.errors.ConfigError(f"{name} holds layer widths >= 1, got {list(getattr(self, name))}.")


@metareg.algorithm(
    "cnp", kind="meta", family="model",
    summary="Conditional Neural Process: encoder over (x, y) support pairs, mean aggregation (per class for "
            "classification), decoder predicting a Gaussian mean and variance (regression) or class logits",
    paper=PAPER, config=CNPConfig, requires={"episodic"})
class CNP(metareg.Learner):
    kind = "meta"
    step_adaptation = False
    capabilities = frozenset({"amortized", "probabilistic"})

    def __init__(self, config: CNPConfig, context: metareg.LearnerContext) -> None:
        super().__init__(config, context)
        task, gen, dt = context.task, context.generator, context.dtype
        self.classify = task.loss == "cross_entropy"
        self.out_dim = task.output_dim
        self.net = context.make_backbone(config.backbone or None)
        self.theta = nn.Parameter(self.net.init_flat(gen, dtype=dt)[: self.net.head_offset].clone())
        with torch.no_grad():
            feat = self.embed(torch.zeros(1, 2, *task.input_shape, dtype=dt), 2).shape[-1]
        r, o = config.rep_dim, self.out_dim
        self.enc_net = metareg.mlp((feat + o,), r, hidden=tuple(int(w) for w in config.encoder_hidden))
        self.enc = nn.Parameter(self.enc_net.init_flat(gen, dtype=dt))
        self.heads = 1 if self.classify else 2 * o  # outputs of g per class / per target
        mode = config.conditioning
        self.generated = mode == "weights" or (mode == "auto" and self.classify)
        hidden = tuple(int(w) for w in config.decoder_hidden)
        if self.generated:
            self.dec_net = metareg.mlp((feat,), r, hidden=hidden)  # phi
            self.head_net = metareg.mlp((r,), self.heads * (r + 1), hidden=())  # r -> [W(r), b(r)]
            self.head = nn.Parameter(self.head_net.init_flat(gen, dtype=dt))
        else:
            self.dec_net = metareg.mlp((feat + r,), self.heads, hidden=hidden)
        self.dec = nn.Parameter(self.dec_net.init_flat(gen, dtype=dt))
        self.to(context.device)

    def embed(self, x: Tensor, support_size: int) -> Tensor:
        """x [T, N, *in] -> f(x) [T, N, F]; the first ``support_size`` examples are the support set."""
        return self.net.forward(self.theta, x, 0, self.net.head_from, support_size=support_size).flatten(2)

    def encode(self, fs: Tensor, ys: Tensor) -> Tensor:
        """r_i = h(f(x_i), y_i) (eq. 1): embedded support inputs [T, S, F] and targets ([T, S, O]
        or labels [T, S]) -> [T, S, R]."""
        code = metareg.one_hot(ys, self.out_dim, fs.dtype) if self.classify else ys.reshape(*ys.shape[:2], -1)
        return self.enc_net(self.enc, torch.cat([fs, code], -1))

    def aggregate(self, r: Tensor, ys: Tensor) -> Tensor:
        """The commutative aggregation (eq. 2): the mean of r_i [T, S, R] -> r [T, R], or, for
        classification, the mean within each class -> [T, N, R]."""
        if self.classify:
            return metareg.class_means(r, ys, self.out_dim)
        return r.mean(1)

    def decode(self, fq: Tensor, rep: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """phi = g(f(x), r) (eq. 3): query embeddings [T, Q, F] and the representation ([T, R], or
        [T, N, R] per class) -> class logits [T, Q, N], or (mu, sigma), each [T, Q, O]."""
        t, q, d = fq.shape
        per_class = rep.dim() == 3
        if self.generated:
            k = rep.shape[-1]
            head = self.head_net(self.head, rep).unflatten(-1, (self.heads, k + 1))  # [T, (N,) H, R+1]
            phi = self.dec_net(self.dec, fq)  # [T, Q, R]
            if per_class:  # one logit per class: W(r_c) phi(x) + b(r_c)
                out = phi @ head[:, :, 0, :k].transpose(1, 2) + head[:, :, 0, k].unsqueeze(1)
            else:
                out = phi @ head[:, :, :k].transpose(1, 2) + head[:, :, k].unsqueeze(1)
        elif per_class:  # every query beside every class's representation
            n = rep.shape[1]
            pairs = torch.cat([fq.unsqueeze(2).expand(t, q, n, d), rep.unsqueeze(1).expand(t, q, n, rep.shape[-1])], -1)
            out = self.dec_net(self.dec, pairs).squeeze(-1)
        else:
            out = self.dec_net(self.dec, torch.cat([fq, rep.unsqueeze(1).expand(t, q, rep.shape[-1])], -1))
        if self.classify:
            return out
        mu, raw = out.chunk(2, -1)
        return mu, self.config.min_std + (1 - self.config.min_std) * F.softplus(raw)

    def predict(self, batch: metareg.TaskBatch) -> Tensor | tuple[Tensor, Tensor]:
        s = batch.support_x.shape[1]
        # support and query in one forward: fewer launches, the same per-task statistics
        f = self.embed(torch.cat([batch.support_x, batch.query_x], 1), s)
        rep = self.aggregate(self.encode(f[:, :s], batch.support_y), batch.support_y)
        return self.decode(f[:, s:], rep)

    def nll(self, out: Tensor | tuple[Tensor, Tensor], y: Tensor) -> Tensor:
        """Per-task mean negative log-likelihood [T] of the query targets: Gaussian (eq. 4) for
        regression, categorical (cross-entropy) for classification."""
        if self.classify:
            return self.losses(out, y)
        mu, sigma = out
        y = y.reshape(mu.shape)
        z = (y - mu) / sigma
        return (0.5 * z * z + sigma.log() + 0.5 * _LOG_2PI).flatten(1).mean(1)

    def step(self, batch: metareg.TaskBatch) -> dict[str, float]:
        out = self.predict(batch)
        loss = self.nll(out, batch.query_y).mean()
        loss.backward()
        if self.classify:
            return {"loss": loss.item(), "accuracy": (out.argmax(-1) == batch.query_y).float().mean().item()}
        with torch.no_grad():
            mse = self.losses(out[0], batch.query_y).mean().item()
        return {"loss": loss.item(), "mse": mse}

    @torch.no_grad()
    def adapt_predict(self, batch: metareg.TaskBatch, steps: Sequence[int]) -> dict[int, Tensor]:
        out = self.predict(batch)
        pred = out if self.classify else out[0]
        return {k: pred for k in steps}

    @torch.no_grad()
    def eval_metrics(self, batch: metareg.TaskBatch) -> dict[str, Tensor]:
        """Extra per-task evaluation metrics [T] beside the benchmark's: ``nll``, the query
        negative log-likelihood under the predicted Gaussian (regression) or categorical."""
        return {"nll": self.nll(self.predict(batch), batch.query_y)}


@metareg.hookimpl
def register_algorithms(register):
    register(CNP)
