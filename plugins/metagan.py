"""MetaGAN: a task-conditioned generator makes fake samples for each episode, and the few-shot
classifier, the discriminator, gets one more class, "fake".

Zhang, Che, Ghahramani, Bengio, Song. MetaGAN: An Adversarial Approach to Few-Shot Learning.
NeurIPS 2018.  The discriminator D is the base learner's N-way classifier with an (N+1)-th class
whose logit is fixed at 0 (Salimans, Goodfellow, Zaremba, Cheung, Radford, Chen. Improved
Techniques for Training GANs. NeurIPS 2016, section 5): with real-class logits l_1..l_N,

    p_D(y = k | x) = exp(l_k) / (1 + sum_j exp(l_j)),    p_D(N+1 | x) = 1 / (1 + sum_j exp(l_j)).

Discriminator (maximised; this module minimises -L_D):

    L_D = L_supervised + L_unsupervised
    L_supervised   = E_{(x,y)~Q_T} log p_D(y | x, y <= N)               (the base learner's N-way cross-entropy)
    L_unsupervised = E_{x~Q_T} log p_D(y <= N | x) + E_{x~p_G^T} log p_D(N+1 | x)

so per example, with s(x) = logsumexp_k l_k: a real (x, y) costs -l_y + s(x) + softplus(-s(x)), a
generated x costs softplus(s(x)); each expectation is the mean over its examples of the episode,
and ``unsupervised`` weights L_unsupervised (1: the paper).

Generator (task-conditioned, section 3.1): an instance encoder embeds every support image, the
mean of the embeddings is the task representation h_T, and each fake sample decodes [h_T, z],
z ~ N(0, I).  On 28x28 images (C channels): linear -> [2w, 7, 7] -> batch norm -> ReLU ->
transposed conv 4x4/2 -> [w, 14, 14] -> batch norm -> ReLU -> transposed conv 4x4/2 -> [C, 28, 28]
-> sigmoid (the episodic image benchmarks hold pixels in [0, 1]); the instance encoder is two
stride-2 convolutions (28 -> 14 -> 7, leaky ReLU) and a linear layer.  Other input shapes get an
MLP decoder and encoder on the flattened input (sigmoid output for images, none for vectors).
The generator's batch norm takes its statistics from each task's own generated samples, so no
episode's fakes depend on another's.  Generator loss: feature matching (Salimans et al. 2016,
section 3.1), per episode

    L_G = || E_{x~Q_T} f(x) - E_{x~G_T} f(x) ||^2

with f the discriminator's features (the layers before its head) on the episode's real query
examples and its generated query samples.

Base learners (``base``):

* ``protonet`` (Snell et al. 2017): real logits l_k = -||f(x) - c_k||^2 + b_T.  The task offset
  b_T = gamma * mean_{j<k} ||c_j - c_k||^2 (gamma = exp(log_gamma) learned, initially
  ``threshold``) sets where "real" ends on the task's own distance scale: with the fake logit
  fixed at 0 and b_T = 0 the real logits would be <= 0 and p(real) <= N/(N+1) whatever the
  distances, and a plain learned bias would need to track the backbone's distance scale (tens on
  Conv4) at Adam's lr.  b_T is the same for every class, so the N-way softmax, ProtoNet's
  classifier, is unchanged.  The fake samples join the query set (a fake has no prototype).
* ``maml`` (Finn et al. 2017): the head keeps N outputs, the fake logit is the fixed 0, so the
  inner loop adapts the (N+1)-way classifier: it descends -L_D on the support set with the
  support fakes added, and the outer loss is -L_D on the query set with the query fakes added
  (both the paper's section 3.2).  f in L_G is the adapted network's body on the query forward.

The fake class is one more class of the episode: by default each set gets as many generated
samples as each real class has there (K in the support set, the queries per class in the query
set; ``fakes`` overrides both).  The generator makes an episode's support and query fakes in one
pass.  Generated samples go through the same forward as the real ones (so a transductive
backbone's batch norm sees them, in training and at evaluation alike, ``eval_fakes``); the
evaluation's fakes come from a fixed seed, so the same learner scores the same tasks the same.
At evaluation the classifier is scored on the N real logits only.

One optimizer step updates both players: :meth:`MetaGAN.step` fills D's gradients with those of
-L_D and G's with those of L_G (torch.autograd.grad over each player's parameters), so the
runner's one Adam step is a simultaneous update of D and G, not the alternating updates of the
paper's training loop.  The training noise is drawn from the learner's generator (saved in
checkpoints, so a resumed run draws the same fakes).

On glyphs at budgets of minutes (200 x 8 tasks) MetaGAN scored below its base learner, same seed
and budget: ProtoNet 5-way 1-shot -0.018 +- 0.009, 5-shot -0.036 +- 0.005; MAML 1-shot after 60 x 8
tasks -0.13 +- 0.01; the discriminator tells the fakes apart almost perfectly throughout
(benchmarks/RESULTS.md, "MetaGAN (issue 10, item 2)").  The paper's gains are after full training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import metareg
from metareg import EmbeddingLearner, GradientMetaConfig, GradientMetaLearner, class_means

PAPER = ("Zhang, Che, Ghahramani, Bengio, Song. MetaGAN: An Adversarial Approach to Few-Shot Learning. "
         "NeurIPS 2018")
#: seed of the noise of evaluation fakes (fixed: a learner scores the same tasks the same)
EVAL_SEED = 20181203


@metareg.config
class MetaGANConfig:
    base: Literal["protonet", "maml"] = metareg.param(
        "protonet", "the few-shot learner that is the discriminator, with one more class, 'fake'")
    unsupervised: float = metareg.param(
        1.0, "weight of L_unsupervised (real vs fake) beside L_supervised (1: the paper)", ge=0)
    fakes: int = metareg.param(0, "generated samples per episode in each of the support and query sets (0: as many "
                                  "as each real class has there: the fake class is one more class)", ge=0)
    noise_dim: int = metareg.param(64, "width of the generator's noise z ~ N(0, I)", ge=1)
    task_dim: int = metareg.param(64, "width of the instance encoder's embedding (the task representation h_T is "
                                      "their mean over the support set)", ge=1)
    gen_width: int = metareg.param(32, "generator channels at 14x14 (twice as many at 7x7); hidden width / 4 of "
                                       "the MLP generator on other input shapes", ge=1)
    threshold: float = metareg.param(0.5, "protonet: initial gamma of the real/fake offset b_T = gamma * the mean "
                                          "squared distance between the task's prototypes (learned)", gt=0)
    eval_fakes: bool = metareg.param(True, "generate the episode's fakes at evaluation too, as in training (they "
                                           "join the forward and, for maml, the adaptation); false: real examples only")
    backbone: str = metareg.param("", "the discriminator's backbone; empty: the benchmark's default")
    inner_lr: float = metareg.param(0.01, "maml: inner-loop learning rate", gt=0)
    inner_steps: int = metareg.param(1, "maml: inner-loop steps during meta-training", ge=1, le=10_000)
    first_order: bool = metareg.param(False, "maml: drop second-order terms")


def gan_losses(logits: Tensor, y: Tensor, ways: int, unsupervised: float = 1.0) -> Tensor:
    """-L_D per episode [T] from real-class logits [T, M, N] and labels [T, M], where label ``ways``
    marks a generated sample (the fake class, logit 0)."""
    real = (y < ways).to(logits.dtype)
    fake = 1 - real
    s = logits.logsumexp(-1)  # [T, M]
    ce = s - logits.gather(-1, y.clamp(max=ways - 1).unsqueeze(-1)).squeeze(-1)
    n_real, n_fake = real.sum(1).clamp_min(1), fake.sum(1).clamp_min(1)
    supervised = (ce * real).sum(1) / n_real
    unsup = (F.softplus(-s) * real).sum(1) / n_real + (F.softplus(s) * fake).sum(1) / n_fake
    return supervised + unsupervised * unsup


def feature_matching(feats: Tensor, real: Tensor) -> Tensor:
    """L_G per episode [T]: ||mean real f - mean fake f||^2 from features [T, M, F] and a real mask [T, M]."""
    r = real.to(feats.dtype).unsqueeze(-1)
    mean_real = (feats * r).sum(1) / r.sum(1).clamp_min(1)
    mean_fake = (feats * (1 - r)).sum(1) / (1 - r).sum(1).clamp_min(1)
    return (mean_real - mean_fake).pow(2).sum(-1)


# -- the generator ---------------------------------------------------------------------------------
def _task_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """Batch norm of x [T, M, C, ...] with each task's statistics (over its M samples and positions)."""
    dims = (1, *range(3, x.dim()))
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, unbiased=False, keepdim=True)
    shape = (1, 1, -1) + (1,) * (x.dim() - 3)
    return (x - mean) / (var + eps).sqrt() * weight.view(shape) + bias.view(shape)


class Generator(nn.Module):
    """Task-conditioned generator: instance encoder -> mean over the support set -> decoder of [h_T, z]."""

    def __init__(self, input_shape: Sequence[int], cfg: MetaGANConfig, generator: torch.Generator, dtype) -> None:
        super().__init__()
        self.input_shape = tuple(int(d) for d in input_shape)
        self.image = len(self.input_shape) == 3
        self.conv = self.image and self.input_shape[1:] == (28, 28)
        w, h, z = cfg.gen_width, cfg.task_dim, cfg.noise_dim
        if self.conv:
            c = self.input_shape[0]
            self.encoder = nn.Sequential(nn.Conv2d(c, w, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(w, 2 * w, 4, 2, 1),
                                         nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(2 * w * 49, h))
            self.fc = nn.Linear(h + z, 2 * w * 49)
            self.up1 = nn.ConvTranspose2d(2 * w, w, 4, 2, 1)
            self.up2 = nn.ConvTranspose2d(w, c, 4, 2, 1)
            widths = (2 * w, w)
        else:
            d, hidden = math.prod(self.input_shape), 4 * w
            self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, h))
            self.fc = nn.Linear(h + z, hidden)
            self.out = nn.Linear(hidden, d)
            widths = (hidden,)
        self.norm_w = nn.ParameterList([nn.Parameter(torch.ones(k)) for k in widths])
        self.norm_b = nn.ParameterList([nn.Parameter(torch.zeros(k)) for k in widths])
        with torch.no_grad():  # PyTorch's default initialisation, drawn from the learner's generator
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                    bound = 1 / math.sqrt(m.weight[0].numel())
                    m.weight.copy_(torch.rand(m.weight.shape, generator=generator) * 2 * bound - bound)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=generator) * 2 * bound - bound)
        self.to(dtype)

    def task_representation(self, support_x: Tensor) -> Tensor:
        """h_T [T, H]: the mean instance embedding of the support images [T, S, *in]."""
        t, s = support_x.shape[:2]
        return self.encoder(support_x.flatten(0, 1)).view(t, s, -1).mean(1)

    def forward(self, support_x: Tensor, z: Tensor) -> Tensor:
        """Fake samples [T, M, *in] of each task from its support images [T, S, *in] and noise [T, M, Z]."""
        t, m = z.shape[:2]
        h = self.task_representation(support_x)
        a = self.fc(torch.cat([h.unsqueeze(1).expand(t, m, h.shape[-1]), z], -1))  # [T, M, ...]
        if self.conv:
            a = F.relu(_task_norm(a.view(t, m, -1, 7, 7), self.norm_w[0], self.norm_b[0]))
            a = self.up1(a.flatten(0, 1)).view(t, m, -1, 14, 14)
            a = F.relu(_task_norm(a, self.norm_w[1], self.norm_b[1]))
            out = torch.sigmoid(self.up2(a.flatten(0, 1)))
        else:
            out = self.out(F.relu(_task_norm(a, self.norm_w[0], self.norm_b[0])))
            out = torch.sigmoid(out) if self.image else out
        return out.view(t, m, *self.input_shape)


# -- the discriminators ----------------------------------------------------------------------------
@metareg.config
class _ProtoConfig:
    backbone: str = metareg.param("", "")


class ProtoDiscriminator(EmbeddingLearner):
    """ProtoNet with a fake class: real logits -||f(x) - c_k||^2 + b_T, fake logit 0."""

    def __init__(self, config, context, threshold: float) -> None:
        super().__init__(config, context)
        self.log_gamma = nn.Parameter(torch.tensor(math.log(threshold), dtype=context.dtype, device=context.device))

    def logits(self, query, support, labels):
        centre = support.mean(1, keepdim=True)  # see protonet: centring keeps float32 distances exact
        query, support = query - centre, support - centre
        protos = class_means(support, labels, self.ways)
        sq = protos.pow(2).sum(-1)  # [T, N]
        dist = query.pow(2).sum(-1, keepdim=True) - 2 * query @ protos.transpose(1, 2) + sq.unsqueeze(1)
        n = self.ways
        between = (2 * n * sq.sum(-1) - 2 * protos.sum(1).pow(2).sum(-1)) / (n * (n - 1))  # mean_{j<k} |c_j-c_k|^2
        return self.log_gamma.exp() * between.view(-1, 1, 1) - dist

    def forward_all(self, batch: metareg.TaskBatch, fakes_s: Tensor, fakes_q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits [T, Q+F, N], features [T, Q+F, D], labels [T, Q+F]) of the query set and its fakes."""
        s = batch.support_x.shape[1]
        emb = self.embed(torch.cat([batch.support_x, batch.query_x, fakes_q], 1), support_size=s)
        logits = self.logits(emb[:, s:], emb[:, :s], batch.support_y)
        return logits, emb[:, s:], _with_fakes(batch.query_y, fakes_q, self.ways)

    @torch.no_grad()
    def predict_all(self, batch: metareg.TaskBatch, fakes_s: Tensor, fakes_q: Tensor,
                    steps: Sequence[int]) -> dict[int, Tensor]:
        logits = self.forward_all(batch, fakes_s, fakes_q)[0]
        return {k: logits for k in steps}


class MAMLDiscriminator(GradientMetaLearner):
    """MAML whose inner and outer losses are -L_D over (N+1) classes (real examples and fakes)."""

    _vjp = False  # the fused loss gradients know the benchmark's loss, not -L_D

    def __init__(self, config, context, unsupervised: float) -> None:
        super().__init__(config, context)
        self.ways, self.unsupervised = context.task.output_dim, unsupervised

    def losses(self, pred, y):
        return gan_losses(pred, y, self.ways, self.unsupervised)

    def query_forward(self, fast: Tensor, xs: Tensor, xq: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, body features) on the query inputs xq at fast weights [T, P] (support xs first
        for non-transductive batch norm)."""
        net, ho = self.net, self.net.head_offset
        if net.transductive:
            feats = net.forward(fast[..., :ho], xq, 0, net.head_from)
        else:
            s = xs.shape[1]
            feats = net.forward(fast[..., :ho], torch.cat([xs, xq], 1), 0, net.head_from, support_size=s)[:, s:]
        return net.forward(fast[..., ho:], feats, net.head_from), feats.flatten(2)

    def _sets(self, batch, fakes_s, fakes_q):
        xs, ys = torch.cat([batch.support_x, fakes_s], 1), _with_fakes(batch.support_y, fakes_s, self.ways)
        xq, yq = torch.cat([batch.query_x, fakes_q], 1), _with_fakes(batch.query_y, fakes_q, self.ways)
        return xs, ys, xq, yq

    def forward_all(self, batch, fakes_s, fakes_q):
        xs, ys, xq, yq = self._sets(batch, fakes_s, fakes_q)
        fast, _ = self.inner_loop(self.theta, xs, ys, self.config.inner_steps, create_graph=not self.config.first_order)
        logits, feats = self.query_forward(fast, xs, xq)
        return logits, feats, yq

    def predict_all(self, batch, fakes_s, fakes_q, steps):
        xs, ys, xq, _ = self._sets(batch, fakes_s, fakes_q)
        wanted = sorted(set(steps))
        with torch.enable_grad():
            theta = self.theta.detach()
            _, kept = self.inner_loop(theta, xs, ys, max(wanted), create_graph=False, keep=[k for k in wanted if k > 0])
        with torch.no_grad():
            return {k: self.query_forward(theta.expand(xs.shape[0], -1) if k == 0 else kept[k].detach(), xs, xq)[0]
                    for k in wanted}


def _with_fakes(y: Tensor, fakes: Tensor, ways: int) -> Tensor:
    """Labels [T, M] followed by the fake class's label ``ways`` for each of the fakes [T, F, ...]."""
    return torch.cat([y, y.new_full(fakes.shape[:2], ways)], 1)


@metareg.algorithm(
    "metagan", kind="meta", family="model",
    summary="MetaGAN: a task-conditioned generator makes fakes for each episode, the base learner (protonet or "
            "maml) classifies N real classes + 1 fake class; feature-matching generator",
    paper=PAPER, config=MetaGANConfig, requires={"episodic", "classification"})
class MetaGAN(metareg.Learner):
    kind = "meta"

    def __init__(self, config: MetaGANConfig, context: metareg.LearnerContext) -> None:
        super().__init__(config, context)
        if context.task.loss != "cross_entropy":
            raise metareg.errors.IncompatibleError("metagan classifies (N real classes + 1 fake): it needs a "
                                                   "classification benchmark.")
        self.ways = context.task.output_dim
        if config.base == "protonet":
            self.d = ProtoDiscriminator(_ProtoConfig(backbone=config.backbone), context, config.threshold)
        else:
            meta = GradientMetaConfig(inner_lr=config.inner_lr, inner_steps=config.inner_steps,
                                      first_order=config.first_order, backbone=config.backbone)
            self.d = MAMLDiscriminator(meta, context, config.unsupervised)
        self.step_adaptation = self.d.step_adaptation
        self.capabilities = self.d.capabilities
        self.gen = Generator(context.task.input_shape, config, context.generator, context.dtype).to(context.device)

    def fake_counts(self, batch: metareg.TaskBatch) -> tuple[int, int]:
        """Generated samples per episode in the support and query sets (the support's only for maml)."""
        f = self.config.fakes
        support = 0 if self.config.base == "protonet" else (f or max(1, batch.support_x.shape[1] // self.ways))
        return support, f or max(1, batch.query_x.shape[1] // self.ways)

    def noise(self, batch: metareg.TaskBatch, generator: torch.Generator) -> Tensor:
        t, (fs, fq) = batch.num_tasks, self.fake_counts(batch)
        z = torch.randn(t, fs + fq, self.config.noise_dim, generator=generator, dtype=self.context.dtype)
        return z.to(batch.support_x.device)

    def fakes(self, batch: metareg.TaskBatch, z: Tensor) -> tuple[Tensor, Tensor]:
        """(support fakes, query fakes) of each episode, made in one generator pass from noise z."""
        out = self.gen(batch.support_x, z)
        fs = self.fake_counts(batch)[0]
        return out[:, :fs], out[:, fs:]

    def objectives(self, batch: metareg.TaskBatch, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(-L_D, L_G) averaged over the episodes, and the query logits [T, Q+F, N] and labels."""
        fakes_s, fakes_q = self.fakes(batch, z)
        logits, feats, y = self.d.forward_all(batch, fakes_s, fakes_q)
        d_loss = gan_losses(logits, y, self.ways, self.config.unsupervised).mean()
        g_loss = feature_matching(feats, y < self.ways).mean()
        return d_loss, g_loss, logits, y

    def step(self, batch: metareg.TaskBatch) -> dict[str, float]:
        d_loss, g_loss, logits, y = self.objectives(batch, self.noise(batch, self.context.generator))
        d_params = [p for p in self.d.parameters() if p.requires_grad]
        g_params = [p for p in self.gen.parameters() if p.requires_grad]
        d_grads = torch.autograd.grad(d_loss, d_params, retain_graph=True, allow_unused=True)
        g_grads = torch.autograd.grad(g_loss, g_params, allow_unused=True)
        for p, g in zip(d_params + g_params, d_grads + g_grads):
            g = torch.zeros_like(p) if g is None else g
            p.grad = g if p.grad is None else p.grad + g
        with torch.no_grad():
            real = y < self.ways
            s = logits.logsumexp(-1)
            p_real = torch.sigmoid(s)  # p_D(y <= N | x)
            acc = (logits.argmax(-1) == y)[real].double().mean()
        return {"loss": d_loss.item(), "gen_loss": g_loss.item(), "accuracy": acc.item(),
                "p_real_real": p_real[real].mean().item(), "p_fake_fake": (1 - p_real[~real]).mean().item()}

    def adapt_predict(self, batch: metareg.TaskBatch, steps: Sequence[int]) -> dict[int, Tensor]:
        q = batch.query_x.shape[1]
        with torch.no_grad():
            if self.config.eval_fakes:
                fakes_s, fakes_q = self.fakes(batch, self.noise(batch, torch.Generator().manual_seed(EVAL_SEED)))
            else:
                empty = batch.support_x[:, :0]
                fakes_s, fakes_q = empty, empty
        out = self.d.predict_all(batch, fakes_s, fakes_q, steps)
        return {k: v[:, :q].detach() for k, v in out.items()}  # the real queries, the N real logits


@metareg.hookimpl
def register_algorithms(register):
    register(MetaGAN)
