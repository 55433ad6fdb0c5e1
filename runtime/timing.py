"""Wall-clock helper for benchmarks (never used by tests to assert anything)."""
from __future__ import annotations

import statistics
import time


def median_ms(fn, repeats: int = 20, warmup: int = 3, inner: int = 1) -> float:
    """Median milliseconds of one call of fn() over `repeats` samples.

    `inner` calls are timed together per sample so very short calls are not
    dominated by timer resolution; the result is still per call.
    """
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) * 1e3 / inner)
    return statistics.median(samples)


def auto_inner(fn, target_ms: float = 2.0, cap: int = 10000) -> int:
    """How many calls make one sample last about target_ms."""
    t0 = time.perf_counter()
    fn()
    dt = max((time.perf_counter() - t0) * 1e3, 1e-4)
    return max(1, min(cap, int(target_ms / dt)))
