"""The ALTO paper's Figure 4: keyed routing only where state needs it, against keyed everywhere.

    python benchmarks/figure4.py                       # writes results/figure4.json and .png
    python benchmarks/figure4.py --quick --out X.json  # tiny setting, what the test suite runs

The pipeline (benchmarks/figure4_app.py): ``split`` fans a request out into ``n`` items,
``work`` spends ``cost`` seconds on each (4 replicas of one item at a time: a fixed pool of
model instances), ``total`` sums them per request. The batch: ``--requests`` requests whose
fan-out sizes are drawn from a Pareto distribution (shape ``--alpha``, scale ``--scale``,
at most ``--cap`` items; seeded), so a few requests have most of the items, as the paper's
per-request fan-outs vary.

Two modes, each an ``altoflow serve benchmarks/figure4_app.py --inline all`` of its own:

  aggregate-keyed   altoflow's rule: only the aggregate (``total``) is keyed, by its group;
                    ``work`` is load-balanced, so a large request's items spread over every
                    replica.
  request-keyed     ``--route-by-request`` (a benchmark knob, docs/cli.md): every stage's items
                    go to the replica their request hashes to, as a system that partitions
                    every stage by the request does; a large request's items queue on one
                    replica while others idle.

Each repetition sends the whole batch at once to one mode, then to the other (the order rotated
by repetition), and measures the makespan (first request sent to last one done, at the client)
and, from each request's recorded timeline (``GET /v1/requests/{id}/timeline``), every ``work``
replica's busy time (the sum of its invocations' start-to-end; one at a time) over the makespan:
its utilisation, reported busiest replica first (the replica a request hashes to changes from
one repetition to the next, as the router numbers requests as they come). ``ideal_makespan_s`` is the batch's total work spread evenly over the replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from e2e import free_port, machine  # noqa: E402

APP = "benchmarks/figure4_app.py"
STAGE = "work"
MODES = {"aggregate-keyed": [], "request-keyed": ["--route-by-request"]}


def fanouts(requests: int, alpha: float, scale: float, cap: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [min(cap, math.ceil(scale * rng.paretovariate(alpha))) for _ in range(requests)]


class Served:
    """``altoflow serve`` of the app in one mode, as a subprocess."""

    def __init__(self, mode: str, requests: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "altoflow.cli", "serve", APP, "--host", "127.0.0.1",
               "--port", str(self.port), "--inline", "all", "--log-level", "warning",
               "--timeline-requests", str(max(100, requests)), *MODES[mode]]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    async def ready(self, client: httpx.AsyncClient, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"figure4: the server exited: "
                                 f"{self.proc.stderr.read().decode(errors='replace')[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{self.url}/healthz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise SystemExit(f"figure4: the server was not ready in {timeout} s")
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _one(client: httpx.AsyncClient, url: str, fields: dict, request_id: str) -> None:
    async with client.stream("POST", f"{url}/v1/run", json=fields,
                             headers={"X-Request-Id": request_id}) as resp:
        resp.raise_for_status()
        last = None
        async for line in resp.aiter_lines():
            if line.strip():
                last = json.loads(line)
    if last is None or last["type"] != "done":
        raise SystemExit(f"figure4: request {request_id} did not end with done: {last}")


async def batch(client: httpx.AsyncClient, server: Served, mode: str, rep: int, sizes: list[int],
                cost: float, replicas: int) -> dict[str, Any]:
    ids = [f"fig4-{mode}-{rep}-{i}" for i in range(len(sizes))]
    started = time.perf_counter()
    await asyncio.gather(*(_one(client, server.url, {"n": n, "cost": cost}, rid)
                           for n, rid in zip(sizes, ids)))
    makespan = time.perf_counter() - started
    busy = [0.0] * replicas
    items = [0] * replicas
    for rid in ids:
        resp = await client.get(f"{server.url}/v1/requests/{rid}/timeline")
        resp.raise_for_status()
        for inv in resp.json()["invocations"]:
            if inv["stage"] == STAGE and inv["kind"] == "call" and inv["end_s"] is not None:
                busy[inv["replica"]] += inv["end_s"] - inv["start_s"]
                items[inv["replica"]] += 1
    return {"mode": mode, "rep": rep, "makespan_s": makespan, "busy_s": busy, "items": items,
            "utilisation": [b / makespan for b in busy]}


async def run(args: argparse.Namespace, sizes: list[int]) -> list[dict[str, Any]]:
    from altoflow.compiler import load_target

    replicas = load_target(str(ROOT / APP)).compiled.plan.stage(STAGE).replicas
    limits = httpx.Limits(max_connections=len(sizes) + 8, max_keepalive_connections=len(sizes) + 8)
    servers = {mode: Served(mode, len(sizes)) for mode in MODES}
    runs = []
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=30.0), limits=limits) as client:
            for server in servers.values():
                await server.ready(client)
                await _one(client, server.url, {"n": 4, "cost": args.cost}, f"warm-{server.port}")
            order = list(MODES)
            for rep in range(args.reps):
                for mode in order[rep % 2:] + order[:rep % 2]:  # interleaved, rotated
                    record = await batch(client, servers[mode], mode, rep, sizes, args.cost, replicas)
                    runs.append(record)
                    print(f"{mode} rep {rep}: makespan {record['makespan_s']:.3f} s, utilisation "
                          + " ".join(f"{u:.2f}" for u in record["utilisation"]), flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return runs


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        spans = [r["makespan_s"] for r in mine]
        # By rank, busiest replica first: which replica a request hashes to differs from one
        # repetition to the next (the router numbers requests as they come).
        ranked = [sorted(r["utilisation"], reverse=True) for r in mine]
        per_replica = [statistics.median(u[i] for u in ranked) for i in range(len(ranked[0]))]
        out[mode] = {"makespan_s": statistics.median(spans), "makespan_min_s": min(spans),
                     "makespan_max_s": max(spans), "utilisation": per_replica,
                     "utilisation_mean": statistics.mean(per_replica),
                     "utilisation_min": min(per_replica), "utilisation_max": max(per_replica)}
    return out


def table(out: dict[str, Any]) -> str:
    rows = ["| mode | makespan s (median, min-max) | utilisation per replica, busiest first | mean |",
            "| --- | --- | --- | --- |"]
    for mode, s in out["summary"].items():
        rows.append(f"| {mode} | {s['makespan_s']:.2f} ({s['makespan_min_s']:.2f}-{s['makespan_max_s']:.2f}) | "
                    + " ".join(f"{u:.2f}" for u in s["utilisation"]) + f" | {s['utilisation_mean']:.2f} |")
    return "\n".join(rows)


def draw(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = out["summary"]
    modes = list(summary)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    spans = [summary[m]["makespan_s"] for m in modes]
    err = [[summary[m]["makespan_s"] - summary[m]["makespan_min_s"] for m in modes],
           [summary[m]["makespan_max_s"] - summary[m]["makespan_s"] for m in modes]]
    left.bar(modes, spans, yerr=err, color=["#4e79a7", "#e15759"], capsize=4)
    left.axhline(out["ideal_makespan_s"], color="black", linestyle="dashed", linewidth=1,
                 label="total work / replicas")
    left.set_ylabel("makespan of the batch (s)")
    left.legend()
    n = len(summary[modes[0]]["utilisation"])
    width = 0.8 / len(modes)
    for k, (mode, colour) in enumerate(zip(modes, ["#4e79a7", "#e15759"])):
        right.bar([i + k * width for i in range(n)], summary[mode]["utilisation"], width,
                  label=mode, color=colour)
    right.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(n)],
                     ["busiest", *(f"#{i + 1}" for i in range(1, n))])
    right.set_xlabel(f"{STAGE} replicas, by busy time")
    right.set_ylim(0, 1.05)
    right.set_ylabel("busy time / makespan")
    right.legend()
    st = out["settings"]
    fig.suptitle(f"{st['requests']} requests, fan-outs Pareto(alpha={st['alpha']}) "
                 f"({min(out['fanouts'])}-{max(out['fanouts'])} items, {sum(out['fanouts'])} in all), "
                 f"{st['cost'] * 1000:g} ms per item")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=1.2, help="Pareto shape of the fan-out sizes")
    parser.add_argument("--scale", type=float, default=3.0, help="Pareto scale (the smallest size)")
    parser.add_argument("--cap", type=int, default=200, help="the largest fan-out")
    parser.add_argument("--cost", type=float, default=0.02, help="seconds a work item takes")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--quick", action="store_true",
                        help="8 requests of at most 24 items, 5 ms each, 1 repetition")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "figure4.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.cap, args.cost, args.reps = 8, 24, 0.005, 1
    sizes = fanouts(args.requests, args.alpha, args.scale, args.cap, args.seed)
    from altoflow.compiler import load_target

    replicas = load_target(str(ROOT / APP)).compiled.plan.stage(STAGE).replicas
    runs = asyncio.run(run(args, sizes))
    command = "python benchmarks/figure4.py" + (" --quick" if args.quick else "")
    out = {
        "benchmark": "figure4", "command": command,
        "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}", "machine": machine(),
        "settings": {"requests": args.requests, "alpha": args.alpha, "scale": args.scale,
                     "cap": args.cap, "cost": args.cost, "reps": args.reps, "seed": args.seed,
                     "replicas": replicas, "placement": "inline"},
        "fanouts": sizes, "ideal_makespan_s": sum(sizes) * args.cost / replicas,
        "runs": runs, "summary": summarise(runs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    png = args.out.with_suffix(".png")
    draw(out, png)
    print(table(out))
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
