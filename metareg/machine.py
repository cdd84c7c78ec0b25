"""What a run takes from the machine: intra-op threads, memory checks before allocating, peak memory."""

from __future__ import annotations

import os
from typing import Any

import torch

from .errors import ConfigError

__all__ = ["PARALLEL_WORK", "choose_threads", "check_fits", "peak_memory_mb", "cores"]


#: inputs per training step (elements) above which the convolutions' work per op outweighs the
#: cost of a parallel region waiting for a descheduled thread on a busy machine
PARALLEL_WORK = 200_000


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_threads(asked: int, bench: Any, device: torch.device, world: int = 1) -> tuple[int, str]:
    """Intra-op threads for a run.  Every small op opens a parallel region that waits for its
    slowest thread; on a busy machine that thread is often descheduled, so small per-op work runs
    single-threaded and only large image batches use the cores (shared among ``world`` processes)."""
    n = max(1, cores() // world)
    if asked:
        return asked, "run.threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    if device.type != "cpu":
        return n, "GPU run: CPU threads only feed it"
    info = bench.info
    size = bench.batch_bytes()
    if len(info.input_shape) >= 3 and size is not None and size // 4 >= PARALLEL_WORK:
        return n, f"image batches of {size // 4:,} inputs: convolutions use the {n} cores"
    return 1, "small per-op work: one thread (a parallel region waits for a descheduled thread on a busy machine)"


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(bench: Any, name: str) -> None:
    """Refuse batch sizes whose inputs alone exceed this machine's memory (the network's
    activations need several times more), before anything is allocated."""
    need, have = bench.batch_bytes(), _physical_memory()
    if need is not None and have is not None and need > have // 2:
        raise ConfigError(f"benchmark {name}: one batch of these sizes holds {need / 2**30:.1f} GiB of inputs alone, "
                          f"more than half this machine's {have / 2**30:.1f} GiB; lower meta_batch, ways, shots or query.")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    except Exception:  # noqa: BLE001
        return float("nan")
