"""Wall-clock timing shared by the benchmarks: a warm-up run, then the median of timed runs."""

import statistics
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall seconds of `repeats` calls of fn, after `warmup` untimed calls (allocator, caches, lazy init)."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
