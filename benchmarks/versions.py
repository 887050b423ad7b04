"""Two versions of altoflow's runtime, served side by side with the floor: CPU a request.

    git worktree add /tmp/before HEAD~1          # the version to compare against
    python benchmarks/versions.py --before /tmp/before
    python benchmarks/versions.py --before /tmp/before --quick --out X.json   # what the tests run

Measures a change to the runtime the way ``benchmarks/e2e.py --lm inprocess`` measures the
systems: one application under one profile, the simulated LM inside each server's process,
``altoflow serve --inline all`` from this checkout ("after") and from ``--before`` ("before"),
with the no-framework floor beside them, every server up at once and warmed, then repetitions
of Poisson load in an order rotated by repetition, each system once a repetition (interleaved).
CPU: user+system seconds of the server's process tree during a run, over the requests
completed. Differences of a millisecond a request are smaller than what moves between runs on a
shared machine; pairing each run with the floor's run of the same repetition takes out what
moves between repetitions, and the table gives both.

Writes the JSON (``runs``: per system and repetition, the CPU per request and the counts) and
prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import e2e  # noqa: E402

SYSTEMS = ("before", "after", "floor")


def _commit(root: Path) -> str:
    proc = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def _server(system: str, args: argparse.Namespace) -> e2e.Server:
    root = args.before.resolve() if system == "before" else e2e.ROOT
    server = "floor" if system == "floor" else "altoflow"
    return e2e.Server(args.app, server, args.profile, None, "inline", lm="inprocess", root=root)


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    inputs = e2e.inputs_of(args.app)
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    runs = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=30.0), limits=limits) as client:
        servers = {system: _server(system, args) for system in SYSTEMS}
        try:
            for server in servers.values():
                await server.ready(client)
            await asyncio.gather(*(e2e.warm(server, client, inputs) for server in servers.values()))
            for rep in range(args.reps):
                order = SYSTEMS[rep % len(SYSTEMS):] + SYSTEMS[: rep % len(SYSTEMS)]
                for system in order:
                    record, detail = await e2e.measure(servers[system], client, inputs, args.rate,
                                                       args.duration, rep)
                    cpu = record["cpu_s_per_request"]
                    runs.append({"system": system, "rep": rep, "completed": detail["completed"],
                                 "errors": detail["errors"], "p50_s": record["p50_s"],
                                 "cpu_ms_per_request": None if cpu is None else cpu * 1000})
                    print(f"rep {rep} {system:6s} {runs[-1]['cpu_ms_per_request'] or 0:6.2f} ms a "
                          f"request ({detail['completed']} requests, {detail['errors']} errors)",
                          flush=True)
        finally:
            for server in servers.values():
                server.stop()
    return runs


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each system's median CPU a request, and each version's over the floor's paired by
    repetition, median over the repetitions."""
    cpu = {s: [r["cpu_ms_per_request"] for r in runs if r["system"] == s
               and r["cpu_ms_per_request"] is not None] for s in SYSTEMS}
    floor = {r["rep"]: r["cpu_ms_per_request"] for r in runs if r["system"] == "floor"}
    out: dict[str, Any] = {"median_ms": {s: statistics.median(v) if v else None for s, v in cpu.items()}}
    for version in ("before", "after"):
        over = [r["cpu_ms_per_request"] - floor[r["rep"]] for r in runs if r["system"] == version
                and r["cpu_ms_per_request"] is not None and floor.get(r["rep"]) is not None]
        out[f"{version}_over_floor_ms"] = statistics.median(over) if over else None
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True,
                        help="a checkout of the version to compare against (git worktree add)")
    parser.add_argument("--app", default="claimverify", choices=e2e.APPS)
    parser.add_argument("--profile", default="paper", choices=e2e.PROFILES)
    parser.add_argument("--rate", type=float, default=8.0, help="requests/s, Poisson")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of arrivals a run")
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="tiny: 1 req/s for 2 s, 1 rep")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "versions.json")
    args = parser.parse_args(argv)
    if not (args.before / "altoflow" / "__init__.py").exists():
        parser.error(f"--before {args.before} holds no altoflow checkout; make one with "
                     f"`git worktree add {args.before} REV`")
    if args.quick:
        args.rate, args.duration, args.reps = 1.0, 2.0, 1
    runs = asyncio.run(measure(args))
    result = {
        "benchmark": "versions",
        "command": "python benchmarks/versions.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": e2e.machine(),
        "settings": {"app": args.app, "profile": args.profile, "rate": args.rate,
                     "duration_s": args.duration, "reps": args.reps},
        "before": _commit(args.before), "after": _commit(e2e.ROOT),
        "runs": runs,
        "summary": summary(runs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    s = result["summary"]

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    print(f"{args.app}/{args.profile}, {args.rate:g} req/s, {args.reps} reps: CPU ms a request, "
          f"median (over the floor, paired)")
    for version in ("before", "after"):
        print(f"  {version} ({result[version]}): {ms(s['median_ms'][version])} "
              f"({ms(s[f'{version}_over_floor_ms'])})")
    print(f"  floor: {ms(s['median_ms']['floor'])}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
