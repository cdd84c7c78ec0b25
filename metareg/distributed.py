"""Data-parallel runs over torch.distributed (``torchrun`` or ``metareg run --nproc N``).

Every rank draws the same global batch from the same seeded generator (drawing costs well under
1% of a step, see ``sample_share``) and keeps its own part of it:

* meta-learners and metric learners split the *tasks* of the meta-batch (each rank's part still
  runs batched over its tasks);
* multi-task learners split the *examples* of every task (a gradient combiner needs all tasks).
  Their per-task losses are all-reduced before the combiner sees them (value of the global batch,
  gradient of the local one), and so is the task Jacobian, so every rank's combiner computes the
  same update and keeps the same state.

Then the gradients are averaged across ranks in one flat all-reduce, and every rank takes the
same optimizer step.  With equal parts per rank this is the gradient of the global batch, so a
2-process run follows the 1-process run to float tolerance (tested with gloo on CPU; NCCL on GPUs
is the same code path).  Batch-norm statistics are per rank, as in DDP without SyncBatchNorm.
Only rank 0 writes files; its checkpoints hold every rank's random-number state.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from typing import Any

import torch

from .errors import ConfigError

__all__ = ["Distributed", "from_env", "world_from_env"]


def world_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


@dataclasses.dataclass
class Distributed:
    rank: int
    world: int
    backend: str
    #: bytes all-reduced so far (gradients, losses, Jacobians) and the seconds spent in all-reduce,
    #: for the communication report in the summary
    bytes_reduced: int = 0
    comm_time: float = 0.0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives ----------------------------------------------------------------------------------
    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce ``t`` in place to its mean over ranks; returns it."""
        import time

        import torch.distributed as dist

        t0 = time.perf_counter()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        self.comm_time += time.perf_counter() - t0
        t.div_(self.world)
        self.bytes_reduced += t.numel() * t.element_size()
        return t

    def mean_grads(self, params: list[torch.Tensor]) -> None:
        """Average ``.grad`` of ``params`` over ranks in one flat all-reduce (a missing grad is zero)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.mean_(flat)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset: offset + n].view_as(g).clone() if p.grad is None else p.grad.copy_(flat[offset: offset + n].view_as(g))
            offset += n

    def global_value(self, local: torch.Tensor) -> torch.Tensor:
        """``local`` with the value of its mean over ranks and the gradient of ``local``."""
        mean = self.mean_(local.detach().clone())
        return local + (mean - local.detach())

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag true on any rank, in one all-reduce (the ranks decide together)."""
        import torch.distributed as dist

        t = torch.tensor([1.0 if f else 0.0 for f in flags])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in t.tolist())

    def mean_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Scalar metrics averaged over ranks (what a 1-process run would log for the global batch)."""
        keys = sorted(k for k, v in metrics.items() if isinstance(v, float))
        if not keys:
            return metrics
        t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
        self.mean_(t)
        return {**metrics, **dict(zip(keys, t.tolist()))}

    def gather(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_params(self, module: torch.nn.Module) -> None:
        import torch.distributed as dist

        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)

    # -- splitting a batch ---------------------------------------------------------------------------
    def part(self, n: int, what: str) -> slice:
        if n % self.world:
            raise ConfigError(f"{what} ({n}) must be divisible by the number of processes ({self.world}) so every "
                              f"rank gets an equal part (the average of the parts is then the global gradient).")
        k = n // self.world
        return slice(self.rank * k, (self.rank + 1) * k)

    def shard(self, batch: Any, kind: str) -> Any:
        """This rank's part of a global batch: its tasks (meta) or its examples of every task
        (multitask)."""
        from .tasks.base import TaskBatch

        if kind == "multitask":
            s = self.part(batch.support_x.shape[1], "support examples per task")
            q = self.part(batch.query_x.shape[1], "query examples per task")
            return TaskBatch(batch.support_x[:, s], batch.support_y[:, s], batch.query_x[:, q], batch.query_y[:, q],
                             batch.task_ids)
        return batch.slice(*_bounds(self.part(batch.num_tasks, "meta_batch (tasks per step)")))

    def close(self, *, finished: bool = False) -> None:
        """Leave the process group.  ``finished``: every rank got here by finishing the run, so
        they first wait for each other, and no rank tears its connections down while another is
        still in its last collective (not after an error: the others may never arrive, and the
        launcher stops them)."""
        import torch.distributed as dist

        if dist.is_initialized():
            if finished:
                dist.barrier()
            dist.destroy_process_group()


def _bounds(s: slice) -> tuple[int, int]:
    return s.start, s.stop


def from_env(device: torch.device) -> Distributed | None:
    """The process group torchrun describes in the environment (None for a single process)."""
    world = world_from_env()
    if world <= 1:
        return None
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=_dt.timedelta(minutes=10))
    return Distributed(rank=dist.get_rank(), world=dist.get_world_size(), backend=backend)
