"""Adversarial shared-private multi-task learning (ASP-MTL).

Liu, Qiu, Huang. Adversarial Multi-task Learning for Text Classification. ACL 2017, section 4:
a shared encoder s = E_s(x) and one private encoder h_t = E_t(x) per task; task t's head reads
[s; h_t] (eq. 10).  The objective (eq. 16) is

    L = L_task + lambda_adv * L_adv + gamma * L_diff,

* L_adv (eqs. 11-13): a task discriminator D(s) = softmax(W_d s + b_d) is trained to tell from
  the shared features which task an example came from, while the shared encoder is trained to
  fool it, through a gradient-reversal layer (Ganin & Lempitsky, ICML 2015): identity forward,
  gradient times -1 backward, so one backward pass trains D to minimise the cross-entropy and E_s
  to maximise it;
* L_diff (eq. 14): sum_t ||S_t^T H_t||_F^2 pushes shared and private features of the same
  examples to orthogonal subspaces.  Here averaged over the batch's tasks and divided by N^2 (N
  examples per task) so ``orthogonality`` does not have to change with the batch size.

What is shared: the shared encoder (``shared``, what gradient combiners see).  Private encoders,
discriminator and heads are task-specific or auxiliary; the adversarial and orthogonality losses
are regularisers whose gradients are added outside the combiner.

A new task: its features are [s; mean_t h_t] (the shared features, which the paper transfers to
new tasks, and the mean of the trained private views), with a fresh head fitted on them; with
``adapt_encoder`` the shared and all private encoders are fine-tuned per new task.
"""

import torch
import torch.nn.functional as F
from torch import nn

import metareg
from metareg import FunctionalNet, Linear, MultiTaskConfig, MultiTaskLearner, feature_dim, reverse_gradient, run_columns


@metareg.config
class AdversarialSharingConfig(MultiTaskConfig):
    adversarial: float = metareg.param(
        0.05, "weight lambda_adv of the task-discriminator loss (through gradient reversal)", ge=0)
    orthogonality: float = metareg.param(0.01, "weight gamma of the shared/private orthogonality loss", ge=0)


@metareg.algorithm("adversarial_sharing", kind="multitask", family="architecture",
                   summary="shared + private encoders; a task discriminator through gradient reversal makes the "
                           "shared features task-invariant; orthogonality loss",
                   paper="Liu, Qiu, Huang. Adversarial Multi-task Learning for Text Classification. ACL 2017",
                   config=AdversarialSharingConfig, requires={"fixed_tasks"})
class AdversarialSharing(MultiTaskLearner):
    def __init__(self, config, context):
        super().__init__(config, context)
        net, m = self.net, self.num_train_tasks
        self.p_enc = net.head_offset
        f = feature_dim(net)
        # heads read [shared; private]: twice the backbone's feature width
        self.head_net, self.head_start = FunctionalNet([Linear(2 * f, net.out_dim)], out_dim=net.out_dim), 0
        g = context.generator
        dt, dev = context.dtype, context.device
        self.shared = nn.Parameter(net.init_flat(g, dtype=dt)[: self.p_enc].to(dev))
        self.private = nn.Parameter(torch.stack([net.init_flat(g, dtype=dt)[: self.p_enc] for _ in range(m)]).to(dev))
        self.disc_net = FunctionalNet([Linear(f, m)], out_dim=m)
        self.disc = nn.Parameter(self.disc_net.init_flat(g, dtype=dt).to(dev))
        self.heads = self._init_heads(g)
        self._parts = None

    def encode(self, params, x):
        return self.net.forward(params, x, 0, self.net.head_from)

    def _private(self, private, x, task_ids=None):
        """Private features: of the task's own encoder (task_ids given) or of every encoder
        [T, M, N, F] (a new task)."""
        if task_ids is not None:
            return self.encode(private[task_ids], x)
        return run_columns(self.net, private, x, 0, self.net.head_from)

    def features(self, x, task_ids):
        s = self.encode(self.shared, x)
        h = self._private(self.private, x, task_ids)
        self._parts = (s, h)
        return torch.cat([s, h], -1)

    def objective(self, batch):
        losses, _, metrics = super().objective(batch)
        s, h = self._parts
        self._parts = None
        t, n = s.shape[:2]
        cfg = self.config
        logits = self.disc_net.forward(self.disc, reverse_gradient(s))
        target = batch.task_ids.view(t, 1).expand(t, n).reshape(-1)
        adv = F.cross_entropy(logits.reshape(t * n, -1), target)
        diff = ((s.transpose(1, 2) @ h) ** 2).sum((1, 2)).mean() / (n * n)
        metrics = {**metrics, "adversarial_loss": adv.item(), "orthogonality_loss": diff.item(),
                   "discriminator_acc": (logits.argmax(-1).reshape(-1) == target).double().mean().item()}
        return losses, cfg.adversarial * adv + cfg.orthogonality * diff, metrics

    def new_task_encoder(self):
        return torch.cat([self.shared, self.private.reshape(-1)]).detach()

    def encode_new(self, enc, x):
        t, n = x.shape[:2]
        m = self.num_train_tasks
        shared = enc[:, : self.p_enc]
        private = enc[:, self.p_enc:].reshape(t, m, self.p_enc)
        if enc.stride(0) == 0:
            flat = x.reshape(1, t * n, *x.shape[2:])
            s = self.encode(shared[0], x)
            h = run_columns(self.net, private[:1], flat, 0, self.net.head_from)[0].mean(0).view(t, n, -1)
        else:
            s = self.encode(shared, x)
            h = self._private(private, x).mean(1)
        return torch.cat([s, h], -1)


@metareg.hookimpl
def register_algorithms(register):
    register(AdversarialSharing)
