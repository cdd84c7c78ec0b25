"""What a run takes from the machine: intra-op threads, task-parallel workers, memory checks
before allocating, peak memory."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from .errors import ConfigError

__all__ = ["PARALLEL_WORK", "choose_threads", "check_fits", "peak_memory_mb", "cores", "in_order", "task_workers"]

T = TypeVar("T")
R = TypeVar("R")


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


_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _single_threaded(barrier: threading.Barrier) -> None:
    # OpenMP's thread count (and MKL's) is per calling thread: this worker's ops run on it alone.
    # First let torch, and metareg's extension, initialise this thread's count: each does it once
    # per thread at its first parallel op, from the process-wide default that the caller puts back
    # below, which would undo the setting
    torch.get_num_threads()
    from .ops._registration import extension

    if extension is not None and hasattr(extension, "_init_thread_count"):
        extension._init_thread_count()
    torch.set_num_threads(1)
    barrier.wait()


def _workers(n: int) -> ThreadPoolExecutor:
    """``n`` threads whose torch ops each run with one intra-op thread (made once per process)."""
    key = (os.getpid(), n)  # a forked child gets its own: the parent's threads are not in it
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            before = torch.get_num_threads()
            pool = ThreadPoolExecutor(n, thread_name_prefix="metareg-task")
            barrier = threading.Barrier(n)  # every one of the n threads starts and sets its own count
            for f in [pool.submit(_single_threaded, barrier) for _ in range(n)]:
                f.result()
            # torch.set_num_threads also stores a process-wide default that new threads start
            # from: put back the caller's, whose own count the workers did not touch
            torch.set_num_threads(before)
            _pools[key] = pool
        return pool


def task_workers(threads: int) -> int:
    """Workers for independent work items (a meta-batch's chunks of tasks) on ``threads`` cores:
    two per core, or 1 for one thread.

    The kernel shares a core among the threads that want it.  Beside one busy process on 2 cores,
    2 workers get 1.5 cores while the scheduler leaves one of them alone on the free core and 1
    core while it puts both there, and it moves them back and forth; more workers than cores keep
    every core's queue holding some of ours wherever they are placed: 3 of 4 runnable threads get
    about 1.5 cores, 4 of 5 about 1.6.  Measured on the Conv4 MAML step (loaded / quiet): 2 workers
    1.5-1.6x, 3 workers 1.29-1.44x, 4 workers 1.20-1.33x; quiet, 4 take 0-5% longer than 2
    (benchmarks/RESULTS.md, "Speed on a busy machine").  Each worker holds one chunk's graph."""
    return 2 * threads if threads > 1 else 1


def in_order(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``fn(item)`` for each item, yielded in the items' order.

    ``workers`` <= 1: one at a time, each computed when the caller asks for it (what is not
    consumed yet is not computed yet).  More: ``fn`` runs on that many threads at once, each with
    one intra-op thread, items taken as threads free up.  On a busy machine a descheduled worker
    then delays only its own item, where an op split across the threads waits for its slowest
    thread at every parallel region; on a quiet one there is no barrier per op.  ``fn`` must not
    depend on the order the items run in (no shared random generator); the caller sees results in
    the items' order, so whatever it sums has the same bits for any number of workers, provided
    ``fn``'s result does not depend on its own thread count.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    pool = _workers(workers)
    futures: list[Future] = [pool.submit(fn, item) for item in items]
    try:
        for f in futures:
            yield f.result()
    finally:  # an error or an interrupt: nothing more is started (running items finish)
        for f in futures:
            f.cancel()


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
