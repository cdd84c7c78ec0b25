"""Task distributions (benchmarks) and the batch format shared by both paradigms."""

from .base import TaskBatch, TaskDistribution, TaskInfo, task_losses, task_metric
from .sinusoid import Sinusoid, SinusoidConfig, SinusoidMTL, SinusoidMTLConfig

__all__ = ["TaskBatch", "TaskDistribution", "TaskInfo", "task_losses", "task_metric",
           "Sinusoid", "SinusoidConfig", "SinusoidMTL", "SinusoidMTLConfig"]
