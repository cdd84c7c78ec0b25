"""Soft parameter sharing: one network per task, tied by an L2 penalty between their parameters.

Duong, Cohn, Bird, Cook. Low Resource Dependency Parsing: Cross-lingual Parameter Sharing in a
Neural Network Parser. ACL 2015, eq. (2): the objective adds lambda ||W_1 - W_2||_F^2 between the
two task networks.  For M tasks the penalty is lambda times the MEAN over task pairs s < t of
||theta_s - theta_t||^2 over the encoder parameters (every layer before the heads), computed as
2 / (M - 1) * sum_t ||theta_t - mean(theta)||^2 (the same number in O(M P), not O(M^2 P)), so
``penalty`` keeps its meaning whatever the number of tasks.  Heads are not tied: tasks may differ
in what their outputs mean.

What is shared: task t's loss depends only on its own network, so no parameter gets gradients
from two tasks; ``shared`` (what gradient combiners see) is the stack of the M encoders, whose
task Jacobian has disjoint row supports.  Gradient combiners therefore see orthogonal task
gradients (PCGrad and GradVac change nothing; MGDA, UPGrad and the weightings only rescale);
the coupling is the penalty, whose gradient is added outside the combiner.

All task networks start from one initialisation (the penalty starts at zero and the networks stay
comparable unit by unit), so the encoder of a new task is their mean, the point the penalty pulls
every network towards; a fresh head is fitted on it (``adapt_encoder``: that mean encoder is
fine-tuned per new task too).

``single_task`` is the same model with no penalty: independent networks, the no-sharing baseline.
"""

import metareg
from metareg import MultiTaskConfig
from metareg import TaskNetworksLearner


@metareg.config
class SoftSharingL2Config(MultiTaskConfig):
    penalty: float = metareg.param(
        1e-2, "weight lambda of the mean pairwise squared L2 distance of the task encoders", ge=0)


@metareg.algorithm("soft_sharing_l2", kind="multitask", family="architecture",
                   summary="a network per task, tied by an L2 penalty between their encoder parameters",
                   paper="Duong et al. Low Resource Dependency Parsing: Cross-lingual Parameter Sharing. ACL 2015",
                   config=SoftSharingL2Config, requires={"fixed_tasks"})
class SoftSharingL2(TaskNetworksLearner):
    def __init__(self, config, context):
        super().__init__(config, context)
        self.l2_weight = config.penalty


@metareg.hookimpl
def register_algorithms(register):
    register(SoftSharingL2)
