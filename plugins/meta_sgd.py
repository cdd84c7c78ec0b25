"""Meta-SGD: learn a per-parameter inner learning rate alongside the initialisation.

Li, Zhou, Chen, Li. Meta-SGD: Learning to Learn Quickly for Few-Shot Learning. arXiv:1707.09835, 2017.
Inner update (eq. 4): theta'_t = theta - alpha o grad L_t^support(theta), alpha a vector the size
of theta learned by the outer loop together with theta.
"""

import torch
from torch import nn

import metareg
from metareg import GradientMetaConfig, GradientMetaLearner


@metareg.config
class MetaSGDConfig(GradientMetaConfig):
    inner_lr: float = metareg.param(0.01, "initial value of every learned per-parameter rate", gt=0)


@metareg.algorithm("meta_sgd", kind="meta", family="optimization",
                   summary="MAML with a learned per-parameter inner learning rate",
                   paper="Li, Zhou, Chen, Li. Meta-SGD: Learning to Learn Quickly for Few-Shot Learning. 2017",
                   config=MetaSGDConfig, requires={"episodic"})
class MetaSGD(GradientMetaLearner):
    capabilities = frozenset({"second_order", "fast_weights", "learned_inner_lr"})

    def __init__(self, config, context):
        super().__init__(config, context)
        n = self.theta.numel() - self.split
        self.alpha = nn.Parameter(torch.full((n,), config.inner_lr, dtype=context.dtype, device=context.device))

    def inner_lr(self):
        return self.alpha


@metareg.hookimpl
def register_algorithms(register):
    register(MetaSGD)
