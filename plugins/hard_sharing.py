"""Hard parameter sharing: one shared encoder, one head per training task.

Caruana. Multitask Learning. Machine Learning 28, 1997 (section 2).  The shared encoder is
trained on the combination of the T task losses chosen by ``combiner`` (``equal``: their mean);
a new task is learned by fitting a fresh head on the frozen encoder from its K support examples.
"""

from typing import Literal

import metareg
from metareg import SharedEncoderLearner


@metareg.config
class HardSharingConfig:
    combiner: str = metareg.param("equal", "how task losses/gradients are combined (see `metareg list --kind multitask`)")
    backbone: str = metareg.param("", "backbone name; empty: the benchmark's default")
    head_fit: Literal["ridge", "sgd"] = metareg.param(
        "ridge", "new-task head: closed-form ridge towards the mean head (regression), or SGD steps from it")
    ridge: float = metareg.param(0.1, "ridge strength lambda of head_fit='ridge'", gt=0)
    adapt_lr: float = metareg.param(0.01, "learning rate of head_fit='sgd'", gt=0)


@metareg.algorithm("hard_sharing", kind="multitask", family="architecture",
                   summary="shared encoder + one head per task; new tasks get a fresh head on the frozen encoder",
                   paper="Caruana. Multitask Learning. Machine Learning 1997", config=HardSharingConfig,
                   requires={"fixed_tasks"})
class HardSharing(SharedEncoderLearner):
    pass


@metareg.hookimpl
def register_algorithms(register):
    register(HardSharing)
