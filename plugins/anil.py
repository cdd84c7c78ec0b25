"""ANIL (Almost No Inner Loop): MAML that adapts only the head in the inner loop.

Raghu, Raghu, Bengio, Vinyals. Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML. ICLR 2020.  Inner update (section 4): only the final layer's parameters
take the MAML step; the body is shared by all tasks and trained by the outer loop.
"""

import metareg
from metareg import GradientMetaConfig, GradientMetaLearner


@metareg.config
class ANILConfig(GradientMetaConfig):
    pass


@metareg.algorithm("anil", kind="meta", family="optimization", summary="MAML adapting only the head (feature reuse)",
                   paper="Raghu, Raghu, Bengio, Vinyals. Rapid Learning or Feature Reuse? ICLR 2020",
                   config=ANILConfig, requires={"episodic"})
class ANIL(GradientMetaLearner):
    def __init__(self, config, context):
        super().__init__(config, context)
        # the head is known once the backbone is built; everything before it is the shared body
        self.adapt_from_layer = self.net.head_from
        self.split = self.net.offset(self.adapt_from_layer)


@metareg.hookimpl
def register_algorithms(register):
    register(ANIL)
