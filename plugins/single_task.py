"""``single_task``: independent networks, one per task, trained side by side with nothing shared.

The no-sharing baseline of multi-task learning (Caruana 1997 compares every multi-task net with
it): ``soft_sharing_l2`` with penalty 0, declared as its own algorithm so experiments can name it.
The M networks start from one initialisation so that their mean is a defined (if weak) encoder for
a new task; on the training tasks each network sees only its own task's data.
"""

import metareg
from metareg import MultiTaskConfig
from metareg import TaskNetworksLearner


@metareg.config
class SingleTaskConfig(MultiTaskConfig):
    pass


@metareg.algorithm("single_task", kind="multitask", family="architecture",
                   summary="baseline: an independent network per task, no parameter shared",
                   paper="Caruana. Multitask Learning. Machine Learning 1997 (single-task baseline)",
                   config=SingleTaskConfig, requires={"fixed_tasks"})
class SingleTask(TaskNetworksLearner):
    pass


@metareg.hookimpl
def register_algorithms(register):
    register(SingleTask)
