"""What every part of the router benchmark shares: the settings, the systems, and the small
process helpers (CPU time and RSS from /proc, starting and stopping children, pinning)."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _stats import percentile


ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "benchmarks" / "apps" / "echo.py"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "router.json"
DEFAULT_MD = ROOT / "docs" / "benchmarks-router.md"
PAYLOAD = bytes(range(100))  # a frame of 4 + ~35 + 100 bytes: a small item, as most are
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
SYSTEMS = ("direct", "worker", "bare", "router-1", "router-2")
# Frames the middle process reads or writes per item (see the docstring).
MIDDLE_FRAMES = {"direct": 0, "worker": 0, "bare": 2, "router-1": 3, "router-2": 4}
# Which process of a trial's cpu_s list is the middle one (the router's includes its client).
MIDDLE_PROCESS = {"bare": 1, "router-1": 0, "router-2": 0}
WHAT = {
    "direct": "client <-> echo, one UNIX socket; encode + decode + re-encode per frame (the floor)",
    "worker": "client <-> a real altoflow worker running `echo`, no router: the client speaks the "
              "router's side of the protocol (DATA out; DATA and ACK back); the worker's own cost",
    "bare": "client <-> forwarder <-> echo; forwarder: header split, dict pick, original bytes, "
            "one write per socket per loop turn",
    "router-1": "Router.submit -> worker (codec, stage runner) -> DATA+ACK -> core -> events to the "
                "client coroutine; includes request admission and its event channel",
    "router-2": "gen worker -> Router -> relay worker -> Router -> client: each item crosses the "
                "router twice (fan-out of one request for throughput)",
}

SETTINGS = {
    "full": dict(latency_n=3000, latency_warm=300, frames=100_000, window=1000, requests=20_000,
                 req_window=1000, fanout=50_000, mem_inflight=10_000, mem_total=1_000_000,
                 mem_step=100_000, mem_budget_s=180.0, mem_warm=10_000, breakdown_n=20_000,
                 breakdown_fanout=50_000, repeat=5),
    "quick": dict(latency_n=50, latency_warm=10, frames=2000, window=100, requests=200,
                  req_window=50, fanout=500, mem_inflight=200, mem_total=2000, mem_step=500,
                  mem_budget_s=20.0, mem_warm=200, breakdown_n=200, breakdown_fanout=2000, repeat=1),
}
SCRIPT = ROOT / "benchmarks" / "router.py"  # children are started through the same command


def have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run_loop(loop: str, coro: Any) -> Any:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child_cmd(*args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), *args]


async def wait_path(path: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        await asyncio.sleep(0.005)


async def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Wait for a child to exit (it does when its socket closes), letting the loop run meanwhile."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return
        await asyncio.sleep(0.005)


def worker_cmd(target: str, stage: str, path: str, loop: str) -> list[str]:
    argv = ["--target", target, "--stage", stage, "--slot", "0", "--connect", path]
    if loop == "uvloop":
        return [sys.executable, "-m", "altoflow", "worker", *argv]
    # The worker picks uvloop whenever it can import it: hide it.
    return [sys.executable, "-c", "import sys; sys.modules['uvloop'] = None; "
            "from altoflow.cli import app; app(['worker', *sys.argv[1:]], prog_name='altoflow')", *argv]


def latency_record(samples: list[float], cpu: list[float]) -> dict:
    samples = sorted(samples)
    return {"p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99),
            "mean": statistics.fmean(samples), "n": len(samples),
            "cpu_us_per_item": [c / len(samples) * 1e6 for c in cpu]}


def pin(pids: list[int], p: dict, middle: int = 0) -> None:
    """With --pin, the trial's middle process (the forwarder or the router; the client when
    there is none) gets the first CPU to itself and every other process shares the rest, so
    that every repetition places them alike and the router never waits behind a replica."""
    if not p.get("pin"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    rest = set(cpus[1:]) or set(cpus)
    for i, pid in enumerate(pids):
        os.sched_setaffinity(pid, {cpus[0]} if i == middle else rest)


def profile_rows(profile: Any, items: int, top: int = 30) -> list[dict]:
    import pstats

    stats = pstats.Stats(profile)
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{os.path.relpath(file, ROOT) if file.startswith(str(ROOT)) else file}:"
                                 f"{line}({func})",
                     "calls": nc, "tottime_s": tt, "cumtime_s": ct,
                     "tottime_us_per_item": tt / items * 1e6, "cumtime_us_per_item": ct / items * 1e6})
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    return rows[:top]
