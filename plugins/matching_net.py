"""Matching Networks.

Vinyals, Blundell, Lillicrap, Kavukcuoglu, Wierstra. Matching Networks for One Shot Learning.
NeurIPS 2016.  Eq. 1: y_hat = sum_i a(x_hat, x_i) y_i with the attention of eq. 2,
a = softmax_i(cos(f(x_hat), g(x_i))); the cosine matrix comes from metareg.ops.pairwise_cosine.
Full-context embeddings (section 2.1.2, appendix A.1/A.2) are an option: g is a bidirectional LSTM
over the support embeddings (g(x_i) = h_fwd + h_bwd + g'(x_i)), f an attention LSTM that reads the
support set for ``fce_steps`` steps.
"""

import torch
import torch.nn.functional as F
from torch import nn

import metareg
from metareg import EmbeddingLearner, one_hot


@metareg.config
class MatchingNetConfig:
    fce: bool = metareg.param(False, "full-context embeddings (bidirectional LSTM g, attention LSTM f)")
    fce_steps: int = metareg.param(5, "processing steps of the attention LSTM (fce only)", ge=1)
    backbone: str = metareg.param("", "embedding backbone (its layers before the head); empty: the benchmark's default")
    combiner: str = metareg.param("equal", "how the per-episode gradients of a meta-batch are combined: 'equal' (the "
                                           "mean loss) or a multi-task combiner (pcgrad, mgda, cagrad, upgrad, ...)")
    adversarial: float = metareg.param(0.0, "weight of a task discriminator on the embeddings trained through gradient "
                                            "reversal (0: off); needs training tasks with ids", ge=0)
    task_parallel: bool = metareg.param(True, metareg.TASK_PARALLEL_HELP)


@metareg.algorithm("matching_net", kind="meta", family="metric",
                   summary="attention over support labels by cosine similarity of embeddings",
                   paper="Vinyals et al. Matching Networks for One Shot Learning. NeurIPS 2016",
                   config=MatchingNetConfig, requires={"episodic", "classification"})
class MatchingNet(EmbeddingLearner):
    episodes_independent = True  # each episode's logits and loss from its own embeddings

    def __init__(self, config, context):
        super().__init__(config, context)
        if config.fce:
            d = self.feature_dim
            self.g_lstm = nn.LSTM(d, d, batch_first=True, bidirectional=True).to(context.device, context.dtype)
            self.f_cell = nn.LSTMCell(2 * d, d).to(context.device, context.dtype)

    def _full_context(self, query, support):
        t, s, d = support.shape
        h, _ = self.g_lstm(support)  # [T, S, 2D]
        g = support + h[..., :d] + h[..., d:]
        q = query.reshape(-1, d)  # [T*Q, D]
        hq, cq = torch.zeros_like(q), torch.zeros_like(q)
        gq = g.unsqueeze(1).expand(t, query.shape[1], s, d).reshape(-1, s, d)  # each query reads its task's support
        for _ in range(self.config.fce_steps):
            h_hat = hq + q
            att = torch.softmax((gq @ h_hat.unsqueeze(-1)).squeeze(-1), -1)  # [T*Q, S]
            r = (att.unsqueeze(-1) * gq).sum(1)
            hq, cq = self.f_cell(torch.cat([q, r], -1), (h_hat, cq))
        return (hq + q).view_as(query), g

    def logits(self, query, support, labels):
        if self.config.fce:
            query, support = self._full_context(query, support)
        att = torch.softmax(metareg.ops.pairwise_cosine(query, support), -1)  # [T, Q, S]
        probs = att @ one_hot(labels, self.ways, att.dtype)  # [T, Q, N]
        return probs.clamp_min(1e-12).log()  # log-probabilities: cross-entropy on them is the paper's NLL

    def loss_from_logits(self, logits, y):
        return F.nll_loss(logits.flatten(0, 1), y.flatten())

    def episode_losses(self, logits, y):
        return F.nll_loss(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape[0], -1).mean(1)


@metareg.hookimpl
def register_algorithms(register):
    register(MatchingNet)
