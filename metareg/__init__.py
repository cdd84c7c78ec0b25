"""metareg: meta-learning and multi-task learning behind one plugin registry.

The public API a plugin needs is importable from here; importing metareg runs no plugin hook
(plugins load on first use of the registry, see :mod:`metareg.plugins`).
"""

__version__ = "0.1.0"

from . import errors, ops  # noqa: E402
from .config import config, param  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .learners import (  # noqa: E402
    Combiner,
    GradientMetaConfig,
    GramCombiner,
    SeededGramCombiner,
    GradientMetaLearner,
    Learner,
    LearnerContext,
    MultiTaskConfig,
    MultiTaskLearner,
    SharedEncoderLearner,
    conflict_metrics,
    feature_dim,
    gram,
    nonneg_qp,
    normalized_gram,
    project_simplex,
    projection_orders,
    solve_spd,
    task_jacobian,
)
from .nets import FunctionalNet  # noqa: E402
from .registry import algorithm, backbone, benchmark, combiner  # noqa: E402
from .tasks import TaskBatch, TaskDistribution, TaskInfo  # noqa: E402

__all__ = [
    "__version__",
    "hookimpl",
    "algorithm",
    "combiner",
    "benchmark",
    "backbone",
    "config",
    "param",
    "Learner",
    "LearnerContext",
    "GradientMetaLearner",
    "GradientMetaConfig",
    "SharedEncoderLearner",
    "MultiTaskConfig",
    "MultiTaskLearner",
    "conflict_metrics",
    "feature_dim",
    "Combiner",
    "GramCombiner",
    "SeededGramCombiner",
    "task_jacobian",
    "gram",
    "normalized_gram",
    "nonneg_qp",
    "project_simplex",
    "projection_orders",
    "solve_spd",
    "TaskBatch",
    "TaskInfo",
    "TaskDistribution",
    "FunctionalNet",
    "errors",
    "ops",
]
