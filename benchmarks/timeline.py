"""The ALTO paper's Figure 2: one real request through every stage, streaming beside barrier.

    python benchmarks/timeline.py                       # writes results/figure2.png, timeline.json
    python benchmarks/timeline.py --quick --out X.json  # tiny setting, what the test suite runs

It serves the flagship claim verifier (examples/claimverify/app.py) twice at once, as
benchmarks/e2e.py does (``altoflow serve --inline all --no-fuse`` on its own ``altoflow sim-lm
--profile P``, the profile's replica counts; without fusion, so that ``bm25`` has bars of its
own rather than being folded into ``query_tokens``), once streaming and once with ``--barrier``; warms each server up with a few
requests (none with ``--quick``), then sends one request alone (X-Request-Id ``figure2-streaming`` or
``figure2-barrier``), fetches its recorded timeline from ``GET /v1/requests/{id}/timeline`` and
draws the two side by side on one time axis (altoflow/_timeline_draw.py): one row per stage in
topological order, one bar per invocation, a tick per output. The JSON has both timelines whole,
and per mode a summary: the request's duration, when each stage produced its first output, and
how much of the work below a fan-out started before that fan-out ended ("overlap": the share of
invocations downstream of a fan-out call, on its items, that started while it still ran; 0 under
``--barrier`` by construction).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from e2e import Server, inputs_of, machine, warm  # noqa: E402

ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from altoflow._timeline_draw import draw  # noqa: E402

APP = "claimverify"
MODES = {"streaming": "altoflow", "barrier": "altoflow-barrier"}


def overlap(doc: dict[str, Any]) -> dict[str, Any]:
    """Of the invocations on a fan-out call's items (their ancestry extends the call's with the
    fan-out's level), how many started before that call ended."""
    stages = {s["name"]: s for s in doc["stages"]}
    calls = [i for i in doc["invocations"] if i["kind"] == "call"]
    below = early = 0
    for fan in calls:
        st = stages[fan["stage"]]
        if st["kind"] != "fanout" or fan["end_s"] is None:
            continue
        level = st["levels_out"][-1]
        mine = fan["ancestry"].items()
        for inv in calls:
            if inv is fan or level not in inv["ancestry"] or not mine <= inv["ancestry"].items():
                continue
            below += 1
            early += inv["start_s"] < fan["end_s"]
    return {"downstream": below, "started_before_fanout_end": early,
            "share": early / below if below else None}


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    first = {}
    for inv in doc["invocations"]:
        for t in inv["outputs_s"]:
            first[inv["stage"]] = min(t, first.get(inv["stage"], t))
    return {"duration_s": doc["duration_s"], "invocations": len(doc["invocations"]),
            "truncated": doc["truncated"],
            "first_output_s": {s["name"]: first.get(s["name"]) for s in doc["stages"]},
            "overlap": overlap(doc)}


async def one_timeline(server: Server, client: httpx.AsyncClient, mode: str,
                       warmups: int) -> dict[str, Any]:
    inputs = inputs_of(APP)
    for _ in range(warmups):
        await warm(server, client, inputs)
    request_id = f"figure2-{mode}"
    started = time.perf_counter()
    async with client.stream("POST", f"{server.url}/v1/run", json=inputs[0],
                             headers={"X-Request-Id": request_id}) as resp:
        resp.raise_for_status()
        last = None
        async for line in resp.aiter_lines():
            if line.strip():
                last = json.loads(line)
    wall = time.perf_counter() - started
    if last is None or last["type"] != "done":
        raise SystemExit(f"timeline: the {mode} request did not end with done: {last}")
    resp = await client.get(f"{server.url}/v1/requests/{request_id}/timeline")
    resp.raise_for_status()
    doc = resp.json()
    return {"client_wall_s": wall, "timeline": doc, "summary": summary(doc)}


async def both(profile: str, warmups: int) -> dict[str, Any]:
    """Both servers start at once (a start takes seconds); their requests run one at a time."""
    # --no-fuse: query_tokens would fold its tokens into bm25 itself, and bm25 would have no bar.
    servers = {mode: Server(APP, system, profile, None, "inline", fuse=False)
               for mode, system in MODES.items()}
    runs = {}
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=30.0)) as client:
            for server in servers.values():
                await server.ready(client)
            for mode, server in servers.items():
                runs[mode] = await one_timeline(server, client, mode, warmups)
                print(f"{mode}: {runs[mode]['summary']['duration_s']:.3f} s", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return runs


def table(out: dict[str, Any]) -> str:
    rows = ["| mode | duration s | invocations | first report s | downstream of a fan-out started before it ended |",
            "| --- | --- | --- | --- | --- |"]
    for mode, run in out["runs"].items():
        s = run["summary"]
        ov = s["overlap"]
        first = s["first_output_s"].get("report")
        rows.append(f"| {mode} | {s['duration_s']:.3f} | {s['invocations']} | "
                    f"{'-' if first is None else f'{first:.3f}'} | "
                    f"{ov['started_before_fanout_end']} of {ov['downstream']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="paper", choices=("paper", "unbounded"))
    parser.add_argument("--warmups", type=int, default=3, help="rounds of 4 requests before the one drawn")
    parser.add_argument("--quick", action="store_true",
                        help="no warm-up: the request drawn is each server's first (the test suite's setting)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "timeline.json")
    parser.add_argument("--png", type=Path, default=None,
                        help="where to draw it (default: figure2.png beside --out)")
    args = parser.parse_args(argv)
    warmups = 0 if args.quick else args.warmups
    png = args.png or args.out.parent / "figure2.png"
    command = "python benchmarks/timeline.py" + (" --quick" if args.quick else "") + \
        (f" --profile {args.profile}" if args.profile != "paper" else "")
    out: dict[str, Any] = {
        "benchmark": "timeline", "command": command, "app": APP, "profile": args.profile,
        "settings": {"warmups": warmups, "placement": "inline", "fuse": False},
        "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}", "machine": machine(),
        "runs": {},
    }
    out["runs"] = asyncio.run(both(args.profile, warmups))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    draw([(f"{APP}, {mode} ({run['summary']['duration_s']:.2f} s)", run["timeline"])
          for mode, run in out["runs"].items()], png)
    print(table(out))
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
