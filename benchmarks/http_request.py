"""What one small request costs the server: ``altoflow serve`` against a bare ASGI app.

    python benchmarks/http_request.py                # 2000 requests x 5 repetitions per variant
    python benchmarks/http_request.py --quick        # a tiny setting, for the test suite

Every variant is a uvicorn process on 127.0.0.1 (uvloop when installed), writing uvicorn's
access line for each request, that answers ``POST /v1/run?partials=false`` with ``{"x": n}``
by one NDJSON output event (``2 * n``) and the done event:

  floor            a hand-written ASGI app (``benchmarks/e2e_serve.py``'s, the end-to-end
                   benchmark's floor server) that computes ``2 * n`` itself
  altoflow-inline  ``altoflow serve benchmarks/apps/double.py --inline all``: the HTTP API,
                   the ingress, the router and the stage's replica, all in one process
  altoflow         ``altoflow serve benchmarks/apps/double.py``: the replica in a process of
                   its own (one hop to it and back over a UNIX socket per request)

The client sends the requests one after another over one keep-alive connection (httpx), checks
each answer, and the server's CPU (user and system, of its process and its children, from
/proc) per request is the measure; the variants run interleaved, fresh processes each
repetition, and each row is the median and min-max over the repetitions. What altoflow adds
to a request is its row less the floor's. Writes benchmarks/results/http_request.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _stats import interleaved, summary
from e2e import cpu_between, free_port, machine, tree_cpu

VARIANTS = ("floor", "altoflow-inline", "altoflow")
APP = HERE / "apps" / "double.py"


async def _double(x: int) -> object:
    yield {"type": "output", "stage": "double", "value": 2 * x}


def _command(variant: str, port: int) -> list[str]:
    if variant == "floor":
        return [sys.executable, str(Path(__file__).resolve()), "--serve-floor", "--port", str(port)]
    cmd = [sys.executable, "-m", "altoflow.cli", "serve", str(APP), "--host", "127.0.0.1",
           "--port", str(port)]
    return cmd + (["--inline", "all"] if variant == "altoflow-inline" else [])


def _measure(variant: str, requests: int, warmup: int) -> dict[str, float]:
    """One repetition of ``variant``: a fresh server, ``warmup`` requests, then the measured."""
    port = free_port()
    proc = subprocess.Popen(_command(variant, port), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        return asyncio.run(_drive(proc, variant, f"http://127.0.0.1:{port}", requests, warmup))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _drive(proc: subprocess.Popen, variant: str, url: str, requests: int,
                 warmup: int) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"http_request: the {variant} server exited ({proc.returncode})")
            try:
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"http_request: the {variant} server was not ready in 60 s")
            await asyncio.sleep(0.1)

        async def one(n: int) -> None:
            answer = await client.post(f"{url}/v1/run?partials=false", json={"x": n})
            events = [json.loads(line) for line in answer.text.splitlines()]
            values = [e["value"] for e in events if e["type"] == "output"]
            if answer.status_code != 200 or values != [2 * n] or events[-1]["type"] != "done":
                raise SystemExit(f"http_request: {variant} answered {answer.status_code} "
                                 f"{answer.text[:300]!r} to x={n}")

        for n in range(warmup):
            await one(n)
        before, t0 = tree_cpu(proc.pid), time.perf_counter()
        for n in range(requests):
            await one(n)
        wall = time.perf_counter() - t0
        cpu = cpu_between(before, tree_cpu(proc.pid))
    return {"cpu_us_per_request": cpu / requests * 1e6, "wall_us_per_request": wall / requests * 1e6}


def _serve_floor(port: int) -> None:
    from e2e_serve import create_app, serve

    serve(create_app(_double), "127.0.0.1", port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="50 requests, 1 repetition")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "http_request.json")
    parser.add_argument("--serve-floor", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_floor:
        _serve_floor(args.port)
        return
    if args.quick:
        args.requests, args.repeat = 50, 1
    warmup = min(200, args.requests)

    def report(rep: int, variant: str, result: dict[str, float], seconds: float) -> None:
        print(f"rep {rep + 1}/{args.repeat} {variant:16s} {result['cpu_us_per_request']:8.0f} us "
              f"CPU a request ({seconds:.0f} s)", flush=True)

    runs = interleaved(args.repeat, VARIANTS,
                       lambda v: _measure(v, args.requests, warmup), report)
    table = {v: {key: summary(r[key] for r in runs[v])
                 for key in ("cpu_us_per_request", "wall_us_per_request")} for v in VARIANTS}
    floor = table["floor"]["cpu_us_per_request"]["median"]
    print(f"\n{'variant':16s} {'CPU us/request':>16s} {'min-max':>13s} {'over the floor':>15s}")
    for v in VARIANTS:
        c = table[v]["cpu_us_per_request"]
        print(f"{v:16s} {c['median']:16.0f} {c['min']:6.0f}-{c['max']:<6.0f} "
              f"{c['median'] - floor:15.0f}")
    command = "python benchmarks/http_request.py" + (" --quick" if args.quick else "")
    if not args.quick and (args.requests, args.repeat) != (2000, 5):
        command += f" --requests {args.requests} --repeat {args.repeat}"
    out = {"benchmark": "http_request", "command": command,
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
           "settings": {"requests": args.requests, "repeat": args.repeat, "warmup": warmup},
           "runs": runs, "summary": table}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
