"""A/B timing helpers: alternate baseline and candidate, report medians and their ratio.

Every figure in ``benchmarks/`` is a ratio against a baseline measured in the same run, so the
machine's speed cancels out. Never used for assertions in tests.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any


def ab(baseline: Callable[[], Any], candidate: Callable[[], Any], *, repeats: int = 7, warmup: int = 1) -> dict[str, float]:
    """Run baseline and candidate alternately (A B B A ...), return medians and candidate/baseline."""
    for _ in range(warmup):
        baseline()
        candidate()
    ta: list[float] = []
    tb: list[float] = []
    for i in range(repeats):
        order = ((baseline, ta), (candidate, tb)) if i % 2 == 0 else ((candidate, tb), (baseline, ta))
        for fn, sink in order:
            gc.collect()
            t0 = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - t0)
    a = statistics.median(ta)
    b = statistics.median(tb)
    return {"baseline_s": a, "candidate_s": b, "ratio": b / a if a else float("inf"), "repeats": repeats}


def median_time(fn: Callable[[], Any], *, repeats: int = 7, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
