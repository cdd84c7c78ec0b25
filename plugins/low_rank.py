"""Low-rank parameter factorisation: each task's encoder weights are a shared basis times task
coefficients.

Yang, Hospedales. Deep Multi-task Representation Learning: A Tensor Factorisation Approach. ICLR
2017 (section 3.1, the "shallow" form of eq. (2) applied per layer): for every parameter tensor j
of the encoder, task t's tensor is W_t^(j) = sum_{k=1..K} c_{t,j,k} B_k^(j), with K = ``rank``
basis tensors B_k^(j) shared by all tasks and one coefficient vector c_{t,j} per task and tensor.
Rank 1 with every coefficient 1 is hard sharing (one encoder B_1); rank M with B_t the t-th task's
network and c = identity is M independent networks: the rank interpolates between the two.

Initialisation: the K bases are independent draws of the backbone's initialiser and every
coefficient is 1/sqrt(K), so all tasks start from one encoder whose scale is the backbone's
(the variance of a sum of K independent draws times 1/K), i.e. from hard sharing; the tasks'
gradients move their coefficients apart.

What is shared: the bases (``shared``, what gradient combiners see).  The coefficients and heads
are task-specific.  A new task's encoder is the bases with the mean coefficients; with
``adapt_encoder`` only its coefficients are fine-tuned (K numbers per tensor: the bases are the
knowledge being transferred).
"""

import math

import torch
from torch import nn

import metareg
from metareg import MultiTaskConfig, MultiTaskLearner


@metareg.config
class LowRankConfig(MultiTaskConfig):
    rank: int = metareg.param(4, "basis tensors K per encoder tensor shared by all tasks", ge=1)


@metareg.algorithm("low_rank", kind="multitask", family="architecture",
                   summary="per-task encoders W_t = sum_k c_tk B_k over a shared rank-K basis",
                   paper="Yang, Hospedales. Deep Multi-task Representation Learning: A Tensor Factorisation Approach. "
                         "ICLR 2017", config=LowRankConfig, requires={"fixed_tasks"})
class LowRank(MultiTaskLearner):
    def __init__(self, config, context):
        super().__init__(config, context)
        net, k, m = self.net, config.rank, self.num_train_tasks
        self.p_enc = net.head_offset
        # the encoder's parameter tensors: each has its own coefficients
        self.sizes, acc = [], 0
        for size in net.sizes:
            if acc >= self.p_enc:
                break
            self.sizes.append(size)
            acc += size
        g = context.generator
        bases = torch.stack([net.init_flat(g, dtype=context.dtype)[: self.p_enc] for _ in range(k)])
        self.shared = nn.Parameter(bases.reshape(-1).to(context.device))
        coef = torch.full((m, len(self.sizes), k), 1.0 / math.sqrt(k), dtype=context.dtype)
        self.coef = nn.Parameter(coef.to(context.device))
        self.heads = self._init_heads(g)

    def compose(self, coef):
        """Encoders [T, P_enc] from coefficients [T, J, K] and the shared bases."""
        bases = self.shared.view(self.config.rank, self.p_enc)
        parts, off = [], 0
        for j, size in enumerate(self.sizes):
            parts.append(coef[:, j, :] @ bases[:, off: off + size])
            off += size
        return torch.cat(parts, 1)

    def features(self, x, task_ids):
        return self.net.forward(self.compose(self.coef[task_ids]), x, 0, self.net.head_from)

    def new_task_encoder(self):
        return self.coef.mean(0).reshape(-1).detach()

    def encode_new(self, enc, x):
        coef = enc.reshape(enc.shape[0], len(self.sizes), self.config.rank)
        if enc.stride(0) == 0:
            return self.net.forward(self.compose(coef[:1])[0], x, 0, self.net.head_from)
        return self.net.forward(self.compose(coef), x, 0, self.net.head_from)


@metareg.hookimpl
def register_algorithms(register):
    register(LowRank)
