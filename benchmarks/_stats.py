"""The statistics every benchmark reports, in one place.

This machine class is shared and noisy (its speed varies by about 2x for seconds at a time), so
a benchmark compares systems measured side by side in one run, interleaved (A B C A B C ...)
so that a slow spell hits all of them alike, and reports the median and the min-max over the
repetitions rather than a mean.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

K = TypeVar("K")
T = TypeVar("T")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0..1) of already sorted values; NaN for none."""
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def summary(values: Iterable[float]) -> dict[str, float]:
    """``{"median", "min", "max"}`` of the values (one per repetition)."""
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def medians(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Key by key, the median over rows that share their keys (one row per pass)."""
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def interleaved(repeat: int, variants: Sequence[K], measure: Callable[[K], T],
                report: Callable[[int, K, T, float], None] | None = None) -> dict[K, list[T]]:
    """Measure every variant once per repetition, in turn (A B C A B C ...): ``{variant: [one
    result per repetition]}``. ``report(repetition, variant, result, seconds)`` follows each."""
    results: dict[K, list[T]] = {v: [] for v in variants}
    for rep in range(repeat):
        for v in variants:
            t0 = time.perf_counter()
            result = measure(v)
            results[v].append(result)
            if report is not None:
                report(rep, v, result, time.perf_counter() - t0)
    return results
