"""Hybrid: multi-task pre-training of the shared encoder, then meta-learning from it.

The first ``pretrain_steps`` outer steps of the run train hard parameter sharing (one encoder, one
head per fixed training task, the task losses combined by ``combiner``: any multi-task combiner,
options as combiner.KEY=VALUE); the remaining steps meta-train ``then`` (maml, fomaml, anil or
protonet) starting from that encoder: at the switch the encoder (every backbone layer before the
head) is copied into the meta-learner's parameters, its head keeps its own initialisation.  The
pre-training steps are counted inside the run's ``--steps`` (the total budget), so a hybrid run is
compared with a pure learner at the same number of outer steps.

One learner holds both sub-learners, so the runner, checkpoints and ``--resume`` work unchanged:
the steps taken are a buffer (saved with the learner; a resume continues the phase it stopped in),
every step's metrics carry ``phase`` (0: pre-training, 1: meta-training) and the learner's state
holds both phases' parameters.  The parameters of the inactive phase are frozen (requires_grad off,
no gradient), so the runner's optimizer leaves them and their Adam state starts with their phase.

Evaluation: during pre-training (including a run that ends inside it) new tasks are scored through
the multi-task learner's protocol (a fresh head on the encoder), afterwards through the
meta-learner's adaptation.  The benchmark must provide fixed training tasks and episodes
(sinusoid_mtl, glyphs_mtl, digits_mtl, relatedness, gradnorm_toy): both phases train on its
training batches (the meta-learner ignores their task ids).
"""

from typing import Literal

import torch

import metareg
from metareg import (EmbeddingLearner, GradientMetaConfig, GradientMetaLearner, Learner, MultiTaskConfig,
                     SharedEncoderLearner, class_means)

THEN = ("maml", "fomaml", "anil", "protonet")


@metareg.config
class HybridConfig:
    pretrain: Literal["hard_sharing"] = metareg.param(
        "hard_sharing", "multi-task architecture of the pre-training (hard sharing: its shared encoder is the "
                        "backbone's body, the layout every meta-learner starts from)")
    then: Literal["maml", "fomaml", "anil", "protonet"] = metareg.param(
        "maml", "meta-learner trained after the pre-training, from the pre-trained encoder")
    pretrain_steps: int = metareg.param(
        300, "outer steps of multi-task pre-training, counted inside the run's steps (the meta-learner gets the "
             "rest; 0: pure meta-learning; >= steps: pure multi-task learning)", ge=0)
    combiner: str = metareg.param("equal", "multi-task combiner of the pre-training (see `metareg list --kind "
                                           "multitask`; options as combiner.KEY=VALUE)")
    backbone: str = metareg.param("", "backbone name; empty: the benchmark's default")
    inner_lr: float = metareg.param(0.01, "meta-learner: inner-loop learning rate (maml, fomaml, anil)", gt=0)
    inner_steps: int = metareg.param(1, "meta-learner: inner-loop steps during meta-training (maml, fomaml, anil)",
                                     ge=1, le=10_000)
    first_order: bool = metareg.param(False, "meta-learner: drop second-order terms (always true for fomaml)")
    head_fit: Literal["auto", "ridge", "sgd"] = metareg.param(
        "auto", "pre-training phase's evaluation: how a new task's head is fitted (see hard_sharing)")
    adapt_lr: float = metareg.param(0.01, "pre-training phase's evaluation: learning rate of head_fit='sgd'", gt=0)


class _ANIL(GradientMetaLearner):
    def __init__(self, config, context):
        super().__init__(config, context)
        self.adapt_from_layer = self.net.head_from
        self.split = self.net.offset(self.adapt_from_layer)


class _ProtoNet(EmbeddingLearner):
    def logits(self, query, support, labels):
        centre = support.mean(1, keepdim=True)  # see protonet: centring keeps float32 distances exact
        query, support = query - centre, support - centre
        protos = class_means(support, labels, self.ways)
        return -(query.pow(2).sum(-1, keepdim=True) - 2 * query @ protos.transpose(1, 2)
                 + protos.pow(2).sum(-1).unsqueeze(1))


@metareg.config
class _ProtoConfig:
    backbone: str = metareg.param("", "")


def _meta_learner(cfg: HybridConfig, context) -> Learner:
    if cfg.then == "protonet":
        return _ProtoNet(_ProtoConfig(backbone=cfg.backbone), context)
    meta_cfg = GradientMetaConfig(inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps,
                                  first_order=cfg.first_order or cfg.then == "fomaml", backbone=cfg.backbone)
    return (_ANIL if cfg.then == "anil" else GradientMetaLearner)(meta_cfg, context)


@metareg.algorithm("hybrid", kind="meta", family="hybrid",
                   summary="multi-task pre-training of the encoder (hard sharing, any combiner), then "
                           "meta-learning (maml/fomaml/anil/protonet) from it, in one run's budget",
                   paper="issue 10, item 5 (pre-train then meta-train)", config=HybridConfig,
                   requires={"episodic", "fixed_tasks"})
class Hybrid(Learner):
    kind = "meta"

    def __init__(self, config: HybridConfig, context) -> None:
        super().__init__(config, context)
        if context.distributed is not None:
            # the runner shards a batch by the learner's kind; the two phases would need different shards
            raise metareg.errors.IncompatibleError("hybrid trains in one process: drop --nproc.")
        mtl_cfg = MultiTaskConfig(combiner=config.combiner, backbone=config.backbone, head_fit=config.head_fit,
                                  adapt_lr=config.adapt_lr)
        self.pretrainer = SharedEncoderLearner(mtl_cfg, context)
        self.meta = _meta_learner(config, context)
        self.step_adaptation = self.meta.step_adaptation
        self.capabilities = frozenset(self.meta.capabilities | {"task_heads", "combiner"})
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long, device=context.device))

    @property
    def phase(self) -> int:
        """0 while pre-training (the next step is one of the first ``pretrain_steps``), else 1."""
        return 0 if int(self.steps_done) < self.config.pretrain_steps else 1

    def _freeze_inactive(self, phase: int) -> None:
        for p in self.pretrainer.parameters():
            p.requires_grad_(phase == 0)
        for p in self.meta.parameters():
            p.requires_grad_(phase == 1)

    @torch.no_grad()
    def copy_encoder(self) -> None:
        """The pre-trained encoder into the meta-learner's body (the same backbone layout)."""
        shared = self.pretrainer.shared
        self.meta.theta[: shared.shape[0]].copy_(shared)

    def step(self, batch):
        phase = self.phase
        if phase == 1 and self.config.pretrain_steps > 0 and int(self.steps_done) == self.config.pretrain_steps:
            self.copy_encoder()
        self._freeze_inactive(phase)
        learner = self.pretrainer if phase == 0 else self.meta
        out = learner.step(batch)
        self.steps_done += 1
        return {**out, "phase": phase}

    def adapt_predict(self, batch, steps):
        learner = self.pretrainer if self.phase == 0 else self.meta
        return learner.adapt_predict(batch, steps)


@metareg.hookimpl
def register_algorithms(register):
    register(Hybrid)
