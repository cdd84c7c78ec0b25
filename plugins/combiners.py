"""Multi-task combiners.  ``equal``: the mean of the task losses (every task weighted 1/T)."""

import metareg
from metareg import Combiner


@metareg.config
class EqualConfig:
    pass


@metareg.combiner("equal", family="weighting", summary="mean of the task losses (equal weights)",
                  paper="Caruana. Multitask Learning. Machine Learning 1997", config=EqualConfig)
class Equal(Combiner):
    pass


@metareg.hookimpl
def register_algorithms(register):
    register(Equal)
