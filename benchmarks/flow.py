"""Router memory under a huge fan-out and under a client that reads nothing.

Two scenarios, each against a served runtime (the router in this process, one process per
replica, ``benchmarks/flow_app.py``):

  fanout   one request whose fan-out yields N ints into an ``ops.sum`` aggregate with one
           replica, and, once it streams, a small request (50 items) whose group lands on the
           same replica; both results are checked against plain Python (items_made counts
           both requests' items)
  reader   one request whose answer is M strings of 4 KiB, never read, for S seconds, while
           small requests run beside it

Router RSS (this process's resident memory, from /proc) is taken before, sampled every 50 ms
(the peak) and after; the small requests' latency says whether the big one starved them. The
inputs of the aggregate's open group that the router keeps for a replay (``--replay-limit``,
default 100000) are part of the fan-out's peak. Also
reported, where the runtime has them: the most invocations the router queued at once
(``RouterCore.statistics().queued_peak``) and the bytes of unread answer it holds.

    python benchmarks/flow.py                    # 1M items; 10000 x 4 KiB unread for 20 s
    python benchmarks/flow.py --quick            # a tiny setting, for the test suite
    python benchmarks/flow.py --items 200000 --timeout 170 --replay-limit 0

Prints a table and writes benchmarks/results/flow.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

from altoflow.compiler import load_target
from altoflow.runtime.supervisor import Supervisor

HERE = Path(__file__).resolve().parent
APP = str(HERE / "flow_app.py")
MIB = 1024 * 1024


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


class Sampler:
    """The peak of ``rss_mib()``, sampled every 50 ms while it runs."""

    def __init__(self) -> None:
        self.peak = rss_mib()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mib())
            await asyncio.sleep(0.05)

    def stop(self) -> float:
        self._task.cancel()
        self.peak = max(self.peak, rss_mib())
        return self.peak


async def _values(stream) -> list:
    return [(e.type, e.value) async for e in stream]


async def _started(target: str, **options) -> Supervisor:
    sup = Supervisor(load_target(target).compiled, target, **options)
    await sup.__aenter__()
    await sup.wait_ready()
    return sup


def _queued_peak(sup: Supervisor) -> int | None:
    return getattr(sup.router.core.statistics(), "queued_peak", None)


async def fanout(n: int, timeout: float, replay_limit: int | None) -> dict:
    options = {} if replay_limit is None else {"replay_limit": replay_limit}
    sup = await _started(f"{APP}:fanin", **options)
    try:
        gc.collect()
        before = rss_mib()
        sampler = Sampler()
        start = time.perf_counter()
        big = asyncio.ensure_future(_values(sup.router.submit({"n": n})))
        while sup.router.stats.items["items"] < min(2000, n // 2) and not big.done():
            await asyncio.sleep(0.01)
        small_start = time.perf_counter()
        try:
            small = await asyncio.wait_for(_values(sup.router.submit({"n": 50})), timeout)
        except asyncio.TimeoutError:
            small_s = None  # starved for the whole timeout
        else:
            small_s = round(time.perf_counter() - small_start, 3)
            assert small == [("output", sum(range(50))), ("done", None)], small
        try:
            events = await asyncio.wait_for(big, max(1.0, timeout - (time.perf_counter() - start)))
        except asyncio.TimeoutError:
            events = []
        finished = events == [("output", sum(range(n))), ("done", None)]
        outcome = "correct" if finished else (events[-1][0] if events else "timed out")
        seconds = time.perf_counter() - start
        peak = sampler.stop()
        gc.collect()
        return {"items": n, "replay_limit": sup.router.core.replay_limit, "finished": finished,
                "outcome": outcome, "seconds": round(seconds, 2),
                "small_request_s": small_s, "rss_before_mib": round(before, 1),
                "rss_peak_mib": round(peak, 1), "rss_after_mib": round(rss_mib(), 1),
                "queued_peak": _queued_peak(sup),
                "items_made": sup.router.stats.items["items"]}
    finally:
        await sup.stop()


async def reader(n: int, seconds: float) -> dict:
    sup = await _started(f"{APP}:reader")
    try:
        gc.collect()
        before = rss_mib()
        sampler = Sampler()
        unread = sup.router.submit({"n": n, "size": 4096})
        small_s = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            small = await asyncio.wait_for(_values(sup.router.submit({"n": 2, "size": 16})), 60)
            assert small[-1][0] == "done", small[-1]
            small_s.append(time.perf_counter() - t)
            await asyncio.sleep(0.2)
        buffered = getattr(sup.router, "buffered_bytes", None)
        held = buffered() if buffered is not None else None
        peak = sampler.stop()
        made = sup.router.stats.items["chunks"]
        await unread.aclose()
        gc.collect()
        return {"chunks": n, "unread_for_s": seconds, "rss_before_mib": round(before, 1),
                "rss_peak_mib": round(peak, 1), "rss_after_mib": round(rss_mib(), 1),
                "buffered_mib": None if held is None else round(held / MIB, 2),
                "chunks_made": made, "small_requests": len(small_s),
                "small_request_max_s": round(max(small_s), 3)}
    finally:
        await sup.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="the fan-out's items")
    parser.add_argument("--timeout", type=float, default=600, help="seconds the fan-out may take")
    parser.add_argument("--replay-limit", type=int, default=None,
                        help="the router's --replay-limit for the fan-out (default: serve's)")
    parser.add_argument("--chunks", type=int, default=10000, help="4 KiB strings of the unread answer")
    parser.add_argument("--unread-for", type=float, default=20, help="seconds the answer stays unread")
    parser.add_argument("--quick", action="store_true", help="a tiny setting, for the test suite")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "flow.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.items, args.chunks, args.unread_for = 5000, 300, 1.0
    record = {
        "benchmark": "flow",
        "command": "python benchmarks/flow.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "os": platform.platform()},
        # The reader first: the fan-out's freed memory would hide what an unread answer takes.
        "reader": asyncio.run(reader(args.chunks, args.unread_for)),
        "fanout": asyncio.run(fanout(args.items, args.timeout, args.replay_limit)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    f, r = record["fanout"], record["reader"]
    print(f"{'scenario':<10} {'RSS before':>10} {'peak':>8} {'after':>8}  notes")
    print(f"{'fanout':<10} {f['rss_before_mib']:>9.1f}M {f['rss_peak_mib']:>7.1f}M {f['rss_after_mib']:>7.1f}M  "
          f"{f['items']} items (replay limit {f['replay_limit']}), {f['outcome']} after "
          f"{f['seconds']} s, small request "
          f"{f['small_request_s']} s, queued peak {f['queued_peak']}")
    print(f"{'reader':<10} {r['rss_before_mib']:>9.1f}M {r['rss_peak_mib']:>7.1f}M {r['rss_after_mib']:>7.1f}M  "
          f"{r['chunks']} chunks unread {r['unread_for_s']} s: {r['chunks_made']} made, "
          f"{r['buffered_mib']} MiB held, {r['small_requests']} small requests (max "
          f"{r['small_request_max_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
