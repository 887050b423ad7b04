"""What Ray costs: replicas as Ray actors (``serve --ray``) against local replica processes.

Two measurements, each with its variants interleaved, repetition by repetition
(``benchmarks/_stats.py``), every variant a fresh supervisor (and fresh replicas):

  hop        one request at a time through the router and one ``echo`` replica
             (``benchmarks/apps/echo.py:one``): p50 and p99 latency in microseconds.
  flagship   the claim verifier (``examples/claimverify/app.py``, simulated LM at
             ``ALTOFLOW_LM_SPEED``, BM25 reranking), 8 requests in flight for ``--seconds``:
             completed requests per second, every result checked for its report.

Variants:

  processes  ``altoflow serve``'s default: a process per replica over a UNIX socket
  tcp        (hop only) the replica started by hand as ``altoflow worker --connect`` over TCP with
             the shared secret on 127.0.0.1: what a Ray actor's connection is, without Ray
  ray        every replica a Ray actor (``Supervisor(ray=RayOptions())``), connected back over
             TCP on 127.0.0.1, on one local Ray started by this script with 16 logical CPUs (so
             the flagship's stages, one CPU each, fit on this machine's two)

The Ray actors' CPU is not this process's children's, so only latency and throughput are
compared. Needs the ``ray`` extra.

    python benchmarks/ray.py                  # 3 repetitions, 400 hop requests, 10 s of flagship
    python benchmarks/ray.py --quick          # 1 repetition, a tiny setting
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _stats  # benchmarks/_stats.py, next to this script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ECHO = f"{HERE / 'apps' / 'echo.py'}:one"
FLAGSHIP = str(ROOT / "examples" / "claimverify" / "app.py")
RESULTS = HERE / "results" / "ray.json"
SECRET = b"benchmark-secret"


async def _supervisor(target: str, variant: str) -> tuple[Any, list[subprocess.Popen]]:
    from altoflow.compiler import load_target
    from altoflow.runtime.ray_placement import RayOptions
    from altoflow.runtime.supervisor import Supervisor

    compiled = load_target(target).compiled
    workers: list[subprocess.Popen] = []
    if variant == "processes":
        sup = Supervisor(compiled, target)
    elif variant == "ray":
        sup = Supervisor(compiled, target, listen=("127.0.0.1", 0), ray=RayOptions())
    else:  # tcp: every replica by hand, over TCP
        names = frozenset(compiled.plan.names)
        sup = Supervisor(compiled, target, listen=("127.0.0.1", 0), secret=SECRET, remote=names)
    await sup.__aenter__()
    if variant == "tcp":
        env = {**os.environ, "ALTOFLOW_SECRET": SECRET.decode()}
        for stage in compiled.plan.stages:
            for slot in range(stage.replicas):
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "altoflow", "worker", "--target", target, "--stage",
                     stage.name, "--slot", str(slot), "--connect", f"127.0.0.1:{sup.tcp_port}",
                     "--log-level", "warning"], env=env))
    await sup.wait_ready(180)
    return sup, workers


async def _stop(sup: Any, workers: list[subprocess.Popen]) -> None:
    await sup.stop()
    for w in workers:
        w.wait(timeout=30)


async def _hop(variant: str, requests: int) -> dict[str, float]:
    sup, workers = await _supervisor(ECHO, variant)
    try:
        async def one() -> None:
            async for event in sup.router.submit({"x": b"ping"}):
                if event.type == "error":
                    raise SystemExit(f"ray benchmark: {variant}: {event.error}")

        for _ in range(50):  # warm-up
            await one()
        latencies = []
        for _ in range(requests):
            t0 = time.perf_counter()
            await one()
            latencies.append(1e6 * (time.perf_counter() - t0))
    finally:
        await _stop(sup, workers)
    latencies.sort()
    return {"p50_us": _stats.percentile(latencies, 0.5), "p99_us": _stats.percentile(latencies, 0.99)}


async def _flagship(variant: str, seconds: float) -> dict[str, float]:
    sup, workers = await _supervisor(FLAGSHIP, variant)
    question = json.loads((ROOT / "examples" / "claimverify" / "input.json").read_text())
    try:
        async def one() -> None:
            reports = 0
            async for event in sup.router.submit(question):
                if event.type == "error":
                    raise SystemExit(f"ray benchmark: {variant}: {event.stage}: {event.error}")
                reports += event.type == "output" and event.stage == "report"
            if not reports:
                raise SystemExit(f"ray benchmark: {variant}: a request ended without a report")

        await asyncio.gather(*(one() for _ in range(8)))  # warm-up
        done = 0
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds

        async def client() -> None:
            nonlocal done
            while loop.time() < end:
                await one()
                done += 1

        t0 = loop.time()
        await asyncio.gather(*(client() for _ in range(8)))
        wall = loop.time() - t0
    finally:
        await _stop(sup, workers)
    return {"requests_per_s": done / wall}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="hop: requests, one at a time")
    parser.add_argument("--seconds", type=float, default=10.0, help="flagship: seconds of load")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 repetition, 50 requests, 3 s")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.seconds, args.repeat = 50, 3.0, 1
    # This file is named ray.py: with its folder on sys.path, `import ray` would import it.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    os.environ.setdefault("ALTOFLOW_LM_SPEED", "20")
    os.environ.setdefault("ALTOFLOW_RERANKER", "bm25")
    os.environ.setdefault("ALTOFLOW_LOG_LEVEL", "warning")

    import ray

    load_before = os.getloadavg()[0]
    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False, namespace="altoflow")
    try:
        def run(coro: Any) -> Any:
            try:
                import uvloop  # the loop altoflow serve runs on, when installed
            except ImportError:
                return asyncio.run(coro)
            return uvloop.run(coro)

        def show(name: str):
            def report(rep: int, variant: str, result: dict[str, float], s: float) -> None:
                shown = "  ".join(f"{k} {v:9.1f}" for k, v in result.items())
                print(f"{name} rep {rep} {variant:10} {shown}  ({s:.1f} s)", flush=True)
            return report

        hop = _stats.interleaved(args.repeat, ["processes", "tcp", "ray"],
                                 lambda v: run(_hop(v, args.requests)), show("hop"))
        flagship = _stats.interleaved(args.repeat, ["processes", "ray"],
                                      lambda v: run(_flagship(v, args.seconds)), show("flagship"))
    finally:
        ray.shutdown()
    summary = {
        "hop": {v: {k: _stats.summary(r[k] for r in rs) for k in rs[0]} for v, rs in hop.items()},
        "flagship": {v: {k: _stats.summary(r[k] for r in rs) for k in rs[0]}
                     for v, rs in flagship.items()},
    }
    print("\nhop p50 us, median [min-max]")
    for v, row in summary["hop"].items():
        c = row["p50_us"]
        print(f"  {v:10} {c['median']:8.1f} [{c['min']:.1f}-{c['max']:.1f}]  p99 {row['p99_us']['median']:.1f}")
    print("flagship requests/s, median [min-max]")
    for v, row in summary["flagship"].items():
        c = row["requests_per_s"]
        print(f"  {v:10} {c['median']:8.2f} [{c['min']:.2f}-{c['max']:.2f}]")
    out = {
        "benchmark": "ray",
        "command": "python benchmarks/ray.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "ray": ray.__version__, "load_before": load_before,
                    "load_after": os.getloadavg()[0]},
        "settings": {"requests": args.requests, "seconds": args.seconds, "repeat": args.repeat,
                     "lm_speed": os.environ["ALTOFLOW_LM_SPEED"]},
        "runs": {"hop": hop, "flagship": flagship},
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
