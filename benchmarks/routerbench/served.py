"""The systems with altoflow's Router: ``router-1`` and ``router-2``, a Router in this process
and one real worker process per stage."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

from .common import APP, PAYLOAD, cpu_seconds, latency_record, pin, profile_rows, stop, worker_cmd


class Served:
    """A Router in this process and one worker process per stage (one replica each)."""

    def __init__(self, pipeline: str, loop: str, max_inflight: int) -> None:
        self.target = f"{APP}:{pipeline}"
        self.loop = loop
        self.max_inflight = max_inflight

    async def __aenter__(self) -> "Served":
        from altoflow.compiler import load_target
        from altoflow.runtime.router import Router

        self.compiled = load_target(self.target).compiled
        self.router = Router(self.compiled, max_inflight=self.max_inflight, seed=0)
        self.tmp = tempfile.mkdtemp(prefix="altoflow-bench-")
        os.chmod(self.tmp, 0o700)
        path = os.path.join(self.tmp, "router.sock")
        await self.router.start(path)
        self.workers: dict[str, subprocess.Popen] = {}
        for stage in self.compiled.plan.stages:
            self.workers[stage.name] = subprocess.Popen(
                worker_cmd(self.target, stage.name, path, self.loop), start_new_session=True)
        want = {s.name: 1 for s in self.compiled.plan.stages}
        deadline = time.monotonic() + 60
        while self.router.ready() != want:
            for name, proc in self.workers.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {name} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("workers did not connect")
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.router.close()
        for proc in self.workers.values():
            await stop(proc)
        shutil.rmtree(self.tmp, ignore_errors=True)

    async def one(self, fields: dict) -> tuple[int, Any]:
        """Submit a request, read its events to the end: (outputs, the last event)."""
        outputs = 0
        last = None
        async for event in self.router.submit(fields):
            last = event
            if event.type == "output":
                outputs += 1
        return outputs, last

    async def requests(self, fields: dict, total: int, window: int) -> None:
        """`total` requests, `window` of them in flight at a time, each read to its end."""
        claim = itertools.count()

        async def client() -> None:
            while next(claim) < total:
                outputs, last = await self.one(fields)
                if last is None or last.type != "done" or outputs != 1:
                    raise RuntimeError(f"request ended with {last}")

        await asyncio.gather(*(client() for _ in range(window)))


async def router_trial(p: dict, pipeline: str) -> dict:
    served = Served(pipeline, p["loop"], max_inflight=max(p["req_window"], 1) + 16)
    async with served:
        fields = {"x": PAYLOAD} if pipeline == "one" else {"x": PAYLOAD, "n": 1}
        pids = [os.getpid(), *(proc.pid for proc in served.workers.values())]
        pin(pids, p)
        lat = []
        for i in range(p["latency_warm"] + p["latency_n"]):
            if i == p["latency_warm"]:
                before = [cpu_seconds(pid) for pid in pids]
            t0 = time.perf_counter_ns()
            outputs, last = await served.one(fields)
            t1 = time.perf_counter_ns()
            if last.type != "done" or outputs != 1:
                raise RuntimeError(f"request ended with {last}")
            if i >= p["latency_warm"]:
                lat.append((t1 - t0) / 1000)
        lat_cpu = [cpu_seconds(pid) - b for pid, b in zip(pids, before)]
        if pipeline == "one":
            await served.requests(fields, min(p["requests"], 5 * p["req_window"]), p["req_window"])
            items = p["requests"]
            run = lambda: served.requests(fields, items, p["req_window"])  # noqa: E731
        else:
            items = p["fanout"]
            await served.one({"x": PAYLOAD, "n": min(items, 10_000)})

            async def run() -> None:
                outputs = 0
                last = None
                start = time.perf_counter()
                router_sum = served.router.stats.latency.sum
                async for last in served.router.submit({"x": PAYLOAD, "n": items}):
                    if last.type == "output":
                        outputs += 1
                        if outputs == 1:
                            fanout_times["first_output_s"] = time.perf_counter() - start
                if last is None or last.type != "done" or outputs != items:
                    raise RuntimeError(f"fan-out ended with {last} after {outputs} outputs")
                # Admission to Finish as the router saw it; the rest is the client draining its
                # stream (a checkpoint every RequestStream.YIELD_EVERY events).
                fanout_times["router_finish_s"] = served.router.stats.latency.sum - router_sum
                fanout_times["client_done_s"] = time.perf_counter() - start

        fanout_times: dict[str, float] = {}
        gc.collect()
        profile = None
        if p.get("profile"):
            import cProfile

            profile = cProfile.Profile()
            profile.enable()
        before = [cpu_seconds(pid) for pid in pids]
        t0 = time.perf_counter()
        await run()
        elapsed = time.perf_counter() - t0
        cpu = [cpu_seconds(pid) - b for pid, b in zip(pids, before)]
        if profile is not None:
            profile.disable()
        result = {"latency_us": latency_record(lat, lat_cpu),
                  "items_per_s": items / elapsed, "items": items, "cpu_s": cpu,
                  "cpu_processes": ["router+client", *(f"worker:{n}" for n in served.workers)]}
        if fanout_times:
            result["fanout_times"] = fanout_times
        if profile is not None:
            result["profile"] = profile_rows(profile, items)
    return result
