"""metareg: meta-learning and multi-task learning behind one plugin registry.

This module is the public API: everything a plugin or a user script needs is importable from
``metareg`` itself (``metareg.errors`` and ``metareg.ops`` are public sub-modules), and the
built-in plugins in ``plugins/`` import nothing else (a test enforces it).  Importing metareg
runs no plugin hook (plugins load on first use of the registry, see :mod:`metareg.plugins`).

Stability: the names in ``__all__`` keep their meaning and signature within a minor version
(0.1.x); a change that breaks them is announced one minor version ahead with a
``DeprecationWarning``.  Anything not listed here (``metareg.learners.multitask``,
``metareg.nets.conv``, ``metareg.runner`` ...) is internal and may change in any release.
"""

__version__ = "0.1.0"

from . import errors, ops  # noqa: E402
from .config import config, param  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .learners import (  # noqa: E402
    Combiner,
    EmbeddingLearner,
    GradientMetaConfig,
    GradientMetaLearner,
    GramCombiner,
    Learner,
    LearnerContext,
    MultiTaskConfig,
    MultiTaskLearner,
    SeededGramCombiner,
    SharedEncoderLearner,
    class_means,
    conflict_metrics,
    feature_dim,
    gram,
    nonneg_qp,
    normalized_gram,
    one_hot,
    project_simplex,
    projection_orders,
    solve_spd,
    task_jacobian,
)
from .learners.base import TASK_PARALLEL_HELP  # noqa: E402
from .learners.meta_batch import reverse_gradient  # noqa: E402
from .learners.multitask import TaskNetworksLearner, pick_columns, run_columns  # noqa: E402
from .machine import in_order  # noqa: E402
from .nets import Flatten, FunctionalNet, Layer, Linear, ReLU, mlp  # noqa: E402
from .nets.conv import batch_norm, conv4, resnet12  # noqa: E402
from .registry import CAPABILITIES, FAMILIES, KINDS, algorithm, backbone, benchmark, combiner  # noqa: E402
from .tasks import TaskBatch, TaskDistribution, TaskInfo, task_losses, task_metric  # noqa: E402
from .tasks.digits import Digits, DigitsConfig  # noqa: E402
from .tasks.episodes import ClassPool, EpisodeConfig, EpisodicImages, sample_episodes  # noqa: E402
from .tasks.folders import MiniImageNet, MiniImageNetConfig, Omniglot, OmniglotConfig  # noqa: E402
from .tasks.glyph_clusters import GlyphClusters, GlyphClustersConfig  # noqa: E402
from .tasks.glyphs import Glyphs, GlyphsConfig  # noqa: E402
from .tasks.mtl_images import DigitsMTL, DigitsMTLConfig, GlyphsMTL, GlyphsMTLConfig  # noqa: E402
from .tasks.mtl_regression import GradNormToy, GradNormToyConfig, Relatedness, RelatednessConfig  # noqa: E402
from .tasks.sinusoid import Sinusoid, SinusoidConfig, SinusoidMTL, SinusoidMTLConfig  # noqa: E402


def load(run_dir, *, device: str | None = None):
    """The trained learner saved in ``run_dir`` (a folder written by ``metareg run``), in eval mode.

    ``learner.adapt(support_x, support_y)`` returns a predictor for the user's own query inputs;
    see :meth:`metareg.Learner.adapt`.  ``learner.task`` describes the inputs it expects
    (``input_shape``, ``output_dim``, ``loss``).
    """
    from .runner import load_run

    run = load_run(run_dir, {"device": device} if device else None)
    run.learner.eval()
    run.learner.adapt_steps = max(run.config.eval_steps)
    return run.learner


__all__ = [
    "__version__",
    # plugin hooks, decorators and the vocabulary they accept
    "hookimpl",
    "algorithm",
    "combiner",
    "benchmark",
    "backbone",
    "config",
    "param",
    "KINDS",
    "FAMILIES",
    "CAPABILITIES",
    # learners
    "Learner",
    "LearnerContext",
    "GradientMetaLearner",
    "GradientMetaConfig",
    "EmbeddingLearner",
    "class_means",
    "one_hot",
    "MultiTaskConfig",
    "MultiTaskLearner",
    "SharedEncoderLearner",
    "TaskNetworksLearner",
    "conflict_metrics",
    "feature_dim",
    "run_columns",
    "pick_columns",
    "reverse_gradient",
    # chunks of a meta-batch on single-threaded worker threads (task_parallel)
    "TASK_PARALLEL_HELP",
    "in_order",
    # combiners and their [T, T] solvers
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
    # task distributions
    "TaskBatch",
    "TaskInfo",
    "TaskDistribution",
    "task_losses",
    "task_metric",
    "EpisodeConfig",
    "EpisodicImages",
    "ClassPool",
    "sample_episodes",
    "Sinusoid",
    "SinusoidConfig",
    "SinusoidMTL",
    "SinusoidMTLConfig",
    "Glyphs",
    "GlyphsConfig",
    "GlyphClusters",
    "GlyphClustersConfig",
    "Digits",
    "DigitsConfig",
    "Omniglot",
    "OmniglotConfig",
    "MiniImageNet",
    "MiniImageNetConfig",
    "GlyphsMTL",
    "GlyphsMTLConfig",
    "DigitsMTL",
    "DigitsMTLConfig",
    "GradNormToy",
    "GradNormToyConfig",
    "Relatedness",
    "RelatednessConfig",
    # networks
    "FunctionalNet",
    "Layer",
    "Linear",
    "ReLU",
    "Flatten",
    "mlp",
    "conv4",
    "resnet12",
    "batch_norm",
    # using a trained model
    "load",
    # public sub-modules
    "errors",
    "ops",
]
