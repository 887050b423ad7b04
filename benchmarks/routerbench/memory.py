"""The router process's memory: RSS and live objects with many requests in flight, after they
finish, and over up to a million finished requests."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from typing import Any

from .common import ROOT, rss_bytes
from .served import Served


def containers(obj: Any) -> dict[str, int]:
    out = {}
    for name, value in vars(obj).items():
        if isinstance(value, (dict, set, list, tuple, frozenset)) or type(value).__name__ == "deque":
            out[name] = len(value)
    return out


def router_state(router: Any) -> dict[str, dict[str, int]]:
    return {"router": containers(router), "core": containers(router.core),
            "progress": containers(router.core.progress),
            "replicas": {str(rid): len(rep.inflight) + len(rep.queue) + len(rep.groups)
                         for rid, rep in router.core.replicas.items()}}


def snapshot(label: str, t0: float, **extra: Any) -> dict:
    gc.collect()
    return {"label": label, "rss_bytes": rss_bytes(), "objects": len(gc.get_objects()),
            "t_s": round(time.perf_counter() - t0, 3), **extra}


def malloc_trim() -> bool:
    """glibc's malloc_trim(0): hand the heap's free memory back to the OS; False without glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = libc.malloc_trim if libc is not None else None
    except (OSError, AttributeError):
        return False
    if trim is None:
        return False
    trim(0)
    return True


async def memory_trial(p: dict) -> dict:
    t0 = time.perf_counter()
    points = []
    n = p["mem_inflight"]
    served = Served("held", p["loop"], max_inflight=max(n, p["req_window"]) + 16)
    async with served:
        router = served.router
        points.append(snapshot("started", t0))
        await served.one({"x": -1})  # open the gate
        await served.requests({"x": 1}, p["mem_warm"], p["req_window"])
        points.append(snapshot(f"after warm-up ({p['mem_warm']} requests)", t0))
        baseline = points[-1]
        await served.one({"x": -2})  # close it
        streams = [router.submit({"x": i}) for i in range(n)]
        deadline = time.monotonic() + 120
        while sum(len(r.inflight) for r in router.core.replicas.values()) < n:
            if time.monotonic() > deadline:
                raise TimeoutError("requests did not reach the replica")
            await asyncio.sleep(0.01)
        points.append(snapshot(f"{n} requests in flight", t0, in_flight=len(router.requests),
                               state=router_state(router)))
        inflight = points[-1]
        await served.one({"x": -1})
        while router.requests:
            await asyncio.sleep(0.01)
        for stream in streams:
            async for _event in stream:
                pass
        del streams, stream
        points.append(snapshot(f"after those {n} finished", t0, state=router_state(router)))
        after_inflight = points[-1]
        finished = 0
        started = time.perf_counter()
        trend = []
        while finished < p["mem_total"] and time.perf_counter() - started < p["mem_budget_s"]:
            step = min(p["mem_step"], p["mem_total"] - finished)
            await served.requests({"x": 1}, step, p["req_window"])
            finished += step
            trend.append(snapshot(f"{finished} finished", t0, finished=finished,
                                  requests_per_s=finished / (time.perf_counter() - started)))
        points.append(snapshot(f"after {finished} finished requests", t0, finished=finished,
                               state=router_state(router)))
        final = points[-1]
        # What of the RSS left over is live data and what is free memory that glibc keeps (the
        # malloc settings above tell it to keep freed memory rather than trim it): give the
        # free memory back and look again.
        trimmed = None
        if malloc_trim():
            points.append(snapshot("after malloc_trim(0)", t0))
            trimmed = points[-1]
        traced = None
        if p.get("tracemalloc"):
            traced = await traced_inflight(served, n)
    per_step = [b["rss_bytes"] - a["rss_bytes"] for a, b in zip(trend, trend[1:])]
    return {
        "points": points, "trend": trend, "finished": finished,
        "budget_s": p["mem_budget_s"], "target": p["mem_total"], "step": p["mem_step"],
        "inflight_bytes_per_request": (inflight["rss_bytes"] - baseline["rss_bytes"]) / n,
        "inflight_objects_per_request": (inflight["objects"] - baseline["objects"]) / n,
        "rss_delta_after_inflight_bytes": after_inflight["rss_bytes"] - baseline["rss_bytes"],
        "rss_delta_final_bytes": final["rss_bytes"] - baseline["rss_bytes"],
        "rss_delta_trimmed_bytes": None if trimmed is None else trimmed["rss_bytes"] - baseline["rss_bytes"],
        "objects_delta_after_inflight": after_inflight["objects"] - baseline["objects"],
        "objects_delta_final": final["objects"] - baseline["objects"],
        "rss_per_step_bytes": per_step,
        "tracemalloc_inflight": traced,
    }


async def traced_inflight(served: Served, n: int) -> dict:
    """Where the bytes of n in-flight requests are, by allocation site (tracemalloc)."""
    import tracemalloc

    router = served.router
    gc.collect()
    tracemalloc.start(3)
    before = tracemalloc.take_snapshot()
    await served.one({"x": -2})
    streams = [router.submit({"x": i}) for i in range(n)]
    while sum(len(r.inflight) for r in router.core.replicas.values()) < n:
        await asyncio.sleep(0.01)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    await served.one({"x": -1})
    for stream in streams:
        async for _event in stream:
            pass
    stats = after.compare_to(before, "traceback")
    total = sum(st.size_diff for st in stats)

    def site(tb: Any) -> str:
        # Innermost frame first; a dataclass's generated __init__ is "<string>": name its caller.
        names = []
        for frame in reversed(tb):  # a Traceback is ordered oldest first
            name = frame.filename
            if name.startswith(str(ROOT)):
                name = os.path.relpath(name, ROOT)
            elif "site-packages" in name:
                name = name.split("site-packages/", 1)[1]
            names.append(f"{name}:{frame.lineno}")
            if frame.filename != "<string>":
                break
        return " <- ".join(names)

    return {"bytes_per_request": total / n,
            "top": [{"site": site(st.traceback), "bytes_per_request": st.size_diff / n,
                     "count_per_request": st.count_diff / n} for st in stats[:12]]}
