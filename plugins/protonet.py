"""Prototypical Networks.

Snell, Swersky, Zemel. Prototypical Networks for Few-shot Learning. NeurIPS 2017.  Eq. 1: the
prototype of class k is the mean embedded support example, c_k = 1/|S_k| sum f(x_i); eq. 2:
p(y = k | x) = softmax_k(-d(f(x), c_k)) with d the squared Euclidean distance.  The cosine option
scores -d = scale * cos(f(x), c_k) (with a learned scale, as in Chen et al. 2019's cosine
classifier), computed by metareg.ops.pairwise_cosine.
"""

from typing import Literal

import torch
from torch import nn

import metareg
from metareg import EmbeddingLearner, class_means


@metareg.config
class ProtoNetConfig:
    distance: Literal["euclidean", "cosine"] = metareg.param("euclidean", "squared Euclidean (the paper) or cosine")
    cosine_scale: float = metareg.param(10.0, "initial (learned) temperature of the cosine scores", gt=0)
    backbone: str = metareg.param("", "embedding backbone (its layers before the head); empty: the benchmark's default")
    combiner: str = metareg.param("equal", "how the per-episode gradients of a meta-batch are combined: 'equal' (the "
                                           "mean loss) or a multi-task combiner (pcgrad, mgda, cagrad, upgrad, ...)")
    adversarial: float = metareg.param(0.0, "weight of a task discriminator on the embeddings trained through gradient "
                                            "reversal (0: off); needs training tasks with ids", ge=0)
    task_parallel: bool = metareg.param(True, metareg.TASK_PARALLEL_HELP)


@metareg.algorithm("protonet", kind="meta", family="metric", summary="nearest class mean (prototype) in embedding space",
                   paper="Snell, Swersky, Zemel. Prototypical Networks for Few-shot Learning. NeurIPS 2017",
                   config=ProtoNetConfig, requires={"episodic", "classification"})
class ProtoNet(EmbeddingLearner):
    episodes_independent = True  # each episode's logits and loss from its own embeddings

    def __init__(self, config, context):
        super().__init__(config, context)
        if config.distance == "cosine":
            self.log_scale = nn.Parameter(torch.tensor(config.cosine_scale, dtype=context.dtype).log())

    def logits(self, query, support, labels):
        if self.config.distance == "cosine":
            protos = class_means(support, labels, self.ways)  # [T, N, F]
            return self.log_scale.exp() * metareg.ops.pairwise_cosine(query, protos)
        # Distances do not change when every embedding of a task moves by the same vector, but the
        # expansion below does: embeddings sharing an offset o make its three terms ~|o|^2, which
        # cancel to the O(1) distance, and float32 then loses the predicted class of ~1% of the
        # queries at |o| = 100.  Centring on the task's support mean first removes the offset
        # (subtracting numbers of like magnitude is exact), and the prototypes are means of the
        # centred embeddings, so they carry no offset either (a class without support examples gets
        # its zero prototype at the support mean rather than at the origin).
        centre = support.mean(1, keepdim=True)
        query, support = query - centre, support - centre
        protos = class_means(support, labels, self.ways)  # [T, N, F]
        # |q - c|^2 = |q|^2 - 2 q.c + |c|^2, as one batched GEMM rather than a [T, Q, N, F] difference
        return -(query.pow(2).sum(-1, keepdim=True) - 2 * query @ protos.transpose(1, 2)
                 + protos.pow(2).sum(-1).unsqueeze(1))


@metareg.hookimpl
def register_algorithms(register):
    register(ProtoNet)
