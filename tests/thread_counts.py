"""``at_thread_counts(fn)``: ``fn()``'s results with 1 and with 2 intra-op threads, for tests that
a kernel's reductions do not depend on the thread count (the thread setting is restored)."""

import torch


def at_thread_counts(fn, counts=(1, 2)):
    before = torch.get_num_threads()
    try:
        results = []
        for threads in counts:
            torch.set_num_threads(threads)
            results.append(fn())
        return results
    finally:
        torch.set_num_threads(before)
