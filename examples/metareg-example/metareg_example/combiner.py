"""A combiner: random loss weighting (Lin et al., TMLR 2022), weights ~ softmax(N(0, I)) each step."""

import torch

import metareg


@metareg.config
class RandomWeightingConfig:
    seed: int = metareg.param(0, "seed of the combiner's own generator (reproducible weights)")


@metareg.combiner("random_weighting", family="weighting", summary="task losses weighted by softmax(N(0, I)), fresh each step",
                  paper="Lin et al. Reasonable Effectiveness of Random Weighting. TMLR 2022", config=RandomWeightingConfig)
class RandomWeighting(metareg.Combiner):
    def __init__(self, config=None, num_tasks=None):
        super().__init__(config, num_tasks)
        self.generator = torch.Generator().manual_seed(config.seed)

    # the generator's state travels in checkpoints, so a resumed run draws the same weights
    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state):
        self.generator.set_state(state["generator"])

    def loss(self, losses, task_ids=None):
        # losses [T] -> a scalar
        w = torch.randn(losses.shape[0], generator=self.generator).softmax(0)
        return (w.to(losses) * losses).sum()
