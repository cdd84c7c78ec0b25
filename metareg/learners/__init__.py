"""The learner protocol and the two families underneath it."""

from .base import Learner, LearnerContext
from .combiners import (
    Combiner,
    GramCombiner,
    SeededGramCombiner,
    gram,
    nonneg_qp,
    normalized_gram,
    project_simplex,
    projection_orders,
    solve_spd,
    task_jacobian,
)
from .meta import GradientMetaConfig, GradientMetaLearner
from .metric import EmbeddingLearner, class_means, one_hot
from .multitask import MultiTaskConfig, MultiTaskLearner, SharedEncoderLearner, conflict_metrics, feature_dim

__all__ = ["Learner", "LearnerContext", "GradientMetaLearner", "GradientMetaConfig", "SharedEncoderLearner", "MultiTaskConfig", "MultiTaskLearner",
           "conflict_metrics", "feature_dim",
           "Combiner", "GramCombiner", "SeededGramCombiner", "task_jacobian", "gram", "normalized_gram", "nonneg_qp", "project_simplex",
           "projection_orders", "solve_spd",
           "EmbeddingLearner", "class_means", "one_hot"]
