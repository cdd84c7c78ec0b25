"""The learner protocol and the two families underneath it."""

from .base import Learner, LearnerContext
from .combiners import Combiner, gram, nonneg_qp, normalized_gram, project_simplex, projection_orders, task_jacobian
from .meta import GradientMetaConfig, GradientMetaLearner
from .metric import EmbeddingLearner, class_means, one_hot
from .multitask import SharedEncoderLearner

__all__ = ["Learner", "LearnerContext", "GradientMetaLearner", "GradientMetaConfig", "SharedEncoderLearner",
           "Combiner", "task_jacobian", "gram", "normalized_gram", "nonneg_qp", "project_simplex", "projection_orders",
           "EmbeddingLearner", "class_means", "one_hot"]
