"""Hard parameter sharing: one shared encoder, one head per training task.

Caruana. Multitask Learning. Machine Learning 28, 1997 (section 2).  The shared encoder is
trained on the combination of the T task losses chosen by ``combiner`` (``equal``: their mean);
a new task is learned by fitting a fresh head on the frozen encoder from its K support examples.
"""

import metareg
from metareg import MultiTaskConfig, SharedEncoderLearner


@metareg.config
class HardSharingConfig(MultiTaskConfig):
    pass


@metareg.algorithm("hard_sharing", kind="multitask", family="architecture",
                   summary="shared encoder + one head per task; new tasks get a fresh head on the frozen encoder",
                   paper="Caruana. Multitask Learning. Machine Learning 1997", config=HardSharingConfig,
                   requires={"fixed_tasks"})
class HardSharing(SharedEncoderLearner):
    pass


@metareg.hookimpl
def register_algorithms(register):
    register(HardSharing)
