"""Three learners: a gradient-based meta-learner, a metric learner and a multi-task architecture."""

import torch
from torch import nn

import metareg


# -- a gradient-based meta-learner: MAML with each task's inner gradient clipped ----------------
@metareg.config
class ClippedMAMLConfig(metareg.GradientMetaConfig):
    clip: float = metareg.param(1.0, "clip each task's inner gradient to this norm", gt=0)


@metareg.algorithm("clipped_maml", kind="meta", family="optimization", summary="MAML with clipped inner gradients",
                   paper="(example plugin)", config=ClippedMAMLConfig, requires={"episodic"})
class ClippedMAML(metareg.GradientMetaLearner):
    def inner_update(self, fast, grads, lr):
        # fast, grads: [T, P] (one row of fast weights per task)
        scale = (self.config.clip / grads.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
        return super().inner_update(fast, grads * scale, lr)


# -- a metric learner: a query's class score is its cosine to the nearest support example -------
@metareg.config
class NearestNeighbourConfig:
    scale: float = metareg.param(10.0, "temperature of the cosine scores", gt=0)
    backbone: str = metareg.param("", "embedding backbone; empty: the benchmark's default")


@metareg.algorithm("nearest_neighbour", kind="meta", family="metric", summary="cosine to the nearest support example",
                   paper="(example plugin)", config=NearestNeighbourConfig, requires={"episodic", "classification"})
class NearestNeighbour(metareg.EmbeddingLearner):
    def logits(self, query, support, labels):
        # query [T, Q, F], support [T, S, F], labels [T, S] -> scores [T, Q, N]
        cos = metareg.ops.pairwise_cosine(query, support)  # [T, Q, S]
        member = metareg.one_hot(labels, self.ways, cos.dtype).transpose(1, 2).unsqueeze(1)  # [T, 1, N, S]
        best = (cos.unsqueeze(2) * member - 2.0 * (1 - member)).amax(-1)  # [T, Q, N]
        return self.config.scale * best


# -- a multi-task architecture: a shared encoder whose features each task scales by its gain ----
@metareg.config
class GatedSharingConfig(metareg.MultiTaskConfig):
    pass


@metareg.algorithm("gated_sharing", kind="multitask", family="architecture",
                   summary="shared encoder, per-task learned feature gains, one head per task",
                   paper="(example plugin)", config=GatedSharingConfig, requires={"fixed_tasks"})
class GatedSharing(metareg.SharedEncoderLearner):
    def __init__(self, config, context):
        super().__init__(config, context)
        self.gains = nn.Parameter(torch.ones(self.num_train_tasks, dtype=context.dtype, device=context.device))

    def features(self, x, task_ids):
        # x [T, N, *in], task_ids [T] -> features [T, N, F]
        return self.encode(self.shared, x) * self.gains[task_ids].view(-1, 1, 1)
