"""How fast is the in-process reference executor (``altoflow.run``)?

It should not be silly: 10k items through a 5-stage pipeline in-process should take seconds,
not minutes. This script times exactly that, for three 5-stage pipelines of the same
shape (a source that fans out N items, three maps, a sum aggregate over the items):

- ``async``: every stage is ``async def`` (the source an async generator);
- ``sync``: every stage is a plain ``def`` (the executor runs each call in a worker thread);
- ``mixed``: sync and async stages alternate.

Two floors without altoflow put these in proportion: ``floor-py`` runs the same five functions
as a plain Python loop, and ``floor-threads`` makes the same 5N ``anyio.to_thread.run_sync`` hops
as the sync pipeline, one after another (the executor can overlap stages; the floor cannot).

The variants are run interleaved (async, sync, mixed, async, sync, mixed, ...) by the shared
``benchmarks/_stats.py``, since this machine class is shared and noisy; each run's
result is checked against plain Python, so a broken run is never timed as a fast one. Prints a
table (median and min-max seconds, items/s at the median) and writes the raw numbers as JSON.

    python benchmarks/executor.py                   # 10k items, 3 repetitions
    python benchmarks/executor.py --quick           # a tiny setting, for the test suite
    python benchmarks/executor.py --profile sync    # where one run's time goes (cProfile)
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import sys
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import anyio
import anyio.to_thread

import altoflow as af
from altoflow import ops, stage

import _stats  # benchmarks/_stats.py, next to this script

RESULTS = Path(__file__).resolve().parent / "results" / "executor.json"


# -- the pipelines ---------------------------------------------------------------------------
# Each map does a little arithmetic and nothing else: what is measured is the executor's cost
# per item and per stage, not the stages' own work.


@stage(fanout="item")
async def a_items(n: int):
    for i in range(n):
        yield i


@stage
async def a_double(a_items: int) -> int:
    return a_items * 2


@stage
async def a_shift(a_double: int) -> int:
    return a_double + 1


@stage
async def a_square(a_shift: int) -> int:
    return a_shift * a_shift


@stage(aggregate=ops.sum)
async def a_total(a_square: int) -> int:
    return a_square % 1000


@stage(fanout="item")
def s_items(n: int):
    yield from range(n)


@stage
def s_double(s_items: int) -> int:
    return s_items * 2


@stage
def s_shift(s_double: int) -> int:
    return s_double + 1


@stage
def s_square(s_shift: int) -> int:
    return s_shift * s_shift


@stage(aggregate=ops.sum)
def s_total(s_square: int) -> int:
    return s_square % 1000


@stage(fanout="item")
def m_items(n: int):
    yield from range(n)


@stage
async def m_double(m_items: int) -> int:
    return m_items * 2


@stage
def m_shift(m_double: int) -> int:
    return m_double + 1


@stage
async def m_square(m_shift: int) -> int:
    return m_shift * m_shift


@stage(aggregate=ops.sum)
def m_total(m_square: int) -> int:
    return m_square % 1000


PIPELINES: dict[str, tuple[af.Pipeline, str]] = {
    "async": (af.Pipeline([a_items, a_double, a_shift, a_square, a_total], name="async"), "a_total"),
    "sync": (af.Pipeline([s_items, s_double, s_shift, s_square, s_total], name="sync"), "s_total"),
    "mixed": (af.Pipeline([m_items, m_double, m_shift, m_square, m_total], name="mixed"), "m_total"),
}


def floor_py(n: int) -> int:
    return sum(s_total(s_square(s_shift(s_double(i)))) for i in s_items(n))


async def _floor_threads(n: int) -> int:
    run_sync = anyio.to_thread.run_sync
    items, total, end = s_items(n), 0, object()
    while (i := await run_sync(next, items, end)) is not end:
        total += await run_sync(s_total, await run_sync(s_square, await run_sync(
            s_shift, await run_sync(s_double, i))))
    return total


def floor_threads(n: int) -> int:
    return anyio.run(_floor_threads, n)


def _pipeline_runner(name: str) -> Callable[[int], Any]:
    pipeline, output = PIPELINES[name]
    return lambda n: af.run(pipeline, n=n)[output]


VARIANTS: dict[str, Callable[[int], Any]] = {
    **{name: _pipeline_runner(name) for name in PIPELINES},
    "floor-py": floor_py,
    "floor-threads": floor_threads,
}
DESCRIPTIONS = {
    "async": "async gen -> 3 async maps -> async sum",
    "sync": "gen -> 3 maps -> sum (threads)",
    "mixed": "gen -> async, sync, async maps -> sum",
    "floor-py": "no altoflow: the 5 functions, a for loop",
    "floor-threads": "no altoflow: 5N to_thread hops in a row",
}


def expected_total(n: int) -> int:
    return sum(((2 * i + 1) ** 2) % 1000 for i in range(n))


# -- measuring -------------------------------------------------------------------------------


def time_one(variant: str, n: int) -> float:
    start = time.perf_counter()
    got = VARIANTS[variant](n)
    seconds = time.perf_counter() - start
    if got != expected_total(n):
        raise SystemExit(f"{variant}: wrong result {got!r} for n={n}")
    return seconds


def measure(variants: list[str], n: int, repeat: int, warmup: bool) -> dict[str, list[float]]:
    if warmup:  # compile the pipelines and start the thread pool outside the timings
        for v in variants:
            time_one(v, min(n, 100))

    def report(rep: int, variant: str, seconds: float, _wall: float) -> None:
        print(f"  round {rep + 1}/{repeat} {variant:<13} {seconds:8.3f} s", file=sys.stderr)

    return _stats.interleaved(repeat, variants, lambda v: time_one(v, n), report)


def summary(times: list[float], n: int) -> dict[str, float]:
    s = _stats.summary(times)
    return {
        "median_s": s["median"],
        "min_s": s["min"],
        "max_s": s["max"],
        "items_per_s": n / s["median"] if s["median"] > 0 else float("inf"),
    }


def git_state() -> dict[str, Any]:
    """The commit measured, and whether altoflow/ had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    status = git("status", "--porcelain", "--", "altoflow")
    return {"commit": git("rev-parse", "HEAD"), "altoflow_dirty": bool(status) if status is not None else None}


def table(results: dict[str, Any], n: int) -> str:
    head = f"{'variant':<13} {'what':<40} {'items':>6} {'median s':>9} {'min-max s':>15} {'items/s':>9}"
    lines = [head, "-" * len(head)]
    for v, r in results.items():
        s = r["summary"]
        span = f"{s['min_s']:.3f}-{s['max_s']:.3f}"
        lines.append(
            f"{v:<13} {DESCRIPTIONS[v]:<40} {n:>6} {s['median_s']:>9.3f} {span:>15} "
            f"{s['items_per_s']:>9.0f}"
        )
    return "\n".join(lines)


def profile(variant: str, n: int, top: int) -> str:
    """cProfile of one run (main thread only: the event loop, where the executor works)."""
    time_one(variant, min(n, 100))
    profiler = cProfile.Profile()
    profiler.enable()
    time_one(variant, n)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000, help="items fanned out per request")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (>= 3)")
    parser.add_argument("--quick", action="store_true", help="tiny setting (200 items, 1 round)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the raw JSON")
    parser.add_argument("--profile", metavar="VARIANT", choices=list(PIPELINES),
                        help="print a cProfile of one run of VARIANT instead of timing")
    parser.add_argument("--top", type=int, default=25, help="rows of the profile to print")
    args = parser.parse_args(argv)

    n, repeat = (200, 1) if args.quick else (args.items, args.repeat)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    if args.profile:
        print(profile(args.profile, n, args.top))
        return 0
    if repeat < 3 and not args.quick:
        print("note: fewer than 3 repetitions; medians are not worth much", file=sys.stderr)

    times = measure(variants, n, repeat, warmup=not args.quick)
    results = {v: {"seconds": times[v], "summary": summary(times[v], n)} for v in variants}
    print(table(results, n))

    record = {
        "benchmark": "executor",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "altoflow": af.__version__,
        "git": git_state(),
        "items": n,
        "repeat": repeat,
        "stages": 5,
        "interleaved": True,
        "variants": {v: {"pipeline": DESCRIPTIONS[v], **results[v]} for v in variants},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
