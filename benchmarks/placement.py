"""What an item costs where its stages run: in-process, served inline, served as processes.

One pipeline, a source that fans out N short strings, a sync map and an ``ops.sum`` aggregate
over them, then a formatter (``benchmarks/placement_app.py``), run three ways:

  executor    ``LocalIngress``: the in-process reference executor (``altoflow.run``'s)
  inline      ``ServedIngress(inline={"all"})``: the router with every replica in its process,
              frames and values handed over as objects (``altoflow/runtime/pipe.py``)
  processes   ``ServedIngress``: the router and one process per replica, over UNIX sockets

Each run submits requests eight at a time and reads every event. CPU is user+system seconds of
this process and its children (the replicas) from ``os.times``, divided by the items the
source made; so it counts the router, the replicas and the consumer, and nothing else. Variants
run interleaved, repetition by repetition (``benchmarks/_stats.py``); each result is checked
against the sum computed in plain Python, so a broken run is never timed as a fast one.

    python benchmarks/placement.py                  # 200 requests of 100 items, 5 repetitions
    python benchmarks/placement.py --quick          # a tiny setting, for the test suite
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import _stats  # benchmarks/_stats.py, next to this script

HERE = Path(__file__).resolve().parent
APP = str(HERE / "placement_app.py")
RESULTS = HERE / "results" / "placement.json"
VARIANTS = ("executor", "inline", "processes")


def _ingress(variant: str) -> Any:
    from altoflow.server import LocalIngress, ServedIngress

    if variant == "executor":
        return LocalIngress(APP)
    return ServedIngress(APP, inline=frozenset({"all"}) if variant == "inline" else frozenset())


async def _request(ingress: Any, n: int) -> int:
    total = None
    async for event in ingress.submit({"n": n}):
        if event.type == "output":
            total = event.value["total"]
        elif event.type == "error":
            raise RuntimeError(f"{event.stage}: {event.error}")
    return total


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _children_cpu() -> float:
    """CPU of the live replica processes, which os.times does not count until they are reaped."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in _children():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _children() -> list[int]:
    me = str(os.getpid())
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        out.append(int(entry))
            except (FileNotFoundError, IndexError):
                pass
    return out


async def _measure(variant: str, requests: int, n: int) -> dict[str, float]:
    expected = sum(len(f"t{i}") for i in range(n))
    async with _ingress(variant) as ingress:
        await asyncio.gather(*(_request(ingress, n) for _ in range(8)))  # warm: every replica up
        cpu0, kids0 = _cpu(), _children_cpu()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for start in range(0, requests, 8):
            got = await asyncio.gather(*(_request(ingress, n) for _ in range(min(8, requests - start))))
            if any(total != expected for total in got):
                raise SystemExit(f"placement: {variant} summed {got[0]}, not {expected}")
        wall = loop.time() - t0
        cpu = _cpu() - cpu0 + _children_cpu() - kids0
    items = requests * n
    return {"cpu_us_per_item": 1e6 * cpu / items, "wall_us_per_item": 1e6 * wall / items}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--items", type=int, default=100, help="items the source makes per request")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--quick", action="store_true", help="16 requests of 20 items, 1 repetition")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.items, args.repeat = 16, 20, 1
    sys.path.insert(0, str(HERE))

    def measure(variant: str) -> dict[str, float]:
        try:
            import uvloop  # the loop altoflow serve runs on, when installed
        except ImportError:
            return asyncio.run(_measure(variant, args.requests, args.items))
        return uvloop.run(_measure(variant, args.requests, args.items))

    def report(rep: int, variant: str, result: dict[str, float], seconds: float) -> None:
        print(f"rep {rep} {variant:10} {result['cpu_us_per_item']:7.1f} us CPU/item  "
              f"{result['wall_us_per_item']:7.1f} us wall/item  ({seconds:.1f} s)", flush=True)

    runs = _stats.interleaved(args.repeat, args.variants, measure, report)
    table = {v: {key: _stats.summary(r[key] for r in results) for key in results[0]}
             for v, results in runs.items()}
    print("\nvariant     CPU us/item median [min-max]")
    for v, row in table.items():
        c = row["cpu_us_per_item"]
        print(f"{v:10}  {c['median']:7.1f} [{c['min']:.1f}-{c['max']:.1f}]")
    out = {
        "benchmark": "placement",
        "command": "python benchmarks/placement.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_before": os.getloadavg()[0]},
        "settings": {"requests": args.requests, "items": args.items, "repeat": args.repeat},
        "runs": runs,
        "summary": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
