"""The learner protocol and the two families underneath it."""

from .base import Learner, LearnerContext
from .combiners import Combiner, task_jacobian
from .meta import GradientMetaConfig, GradientMetaLearner
from .multitask import SharedEncoderLearner

__all__ = ["Learner", "LearnerContext", "GradientMetaLearner", "GradientMetaConfig", "SharedEncoderLearner",
           "Combiner", "task_jacobian"]
