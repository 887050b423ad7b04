"""The runtime's own cost: one router hop against two processes talking directly.

    python benchmarks/router.py                      # full run, about 10 minutes on 2 vCPUs
    python benchmarks/router.py --loops both         # uvloop and asyncio, interleaved
    python benchmarks/router.py --quick --out X.json # tiny setting, what the test suite runs
    python benchmarks/router.py --markdown           # docs/benchmarks-router.md from the JSON

The parts live in benchmarks/routerbench/ (common, endpoints, served, memory, breakdown,
analysis, report); the statistics are benchmarks/_stats.py, shared by every benchmark.

Systems, measured side by side in one run, interleaved (A B C D E A B C D E ...), each
repetition with fresh processes; every number is the median and min-max over the repetitions:

  direct      a client and an echo process over one UNIX socket. The client encodes each frame
              with frames.encode_frame, the echo decodes it (FrameReader.feed) and answers with a
              new frame (FrameWriter, one write per event-loop turn). The floor.
  worker      the same client speaking the router's side of the protocol straight to a real
              altoflow worker (python -m altoflow worker) running benchmarks/apps/echo.py
              `echo`: DATA out, DATA and ACK back; no router. The worker's own cost (task per
              invocation, codec, stage runner, the ACK frame) over the floor.
  bare        the direct client and echo with a third process between them that splits frames
              off the stream (FrameReader.feed_raw: the 24-byte header only), picks the
              destination socket by the header's stage, and writes the original bytes, coalesced
              into one write per socket per event-loop turn. The floor for a Python router.
  router-1    altoflow's Router (this process, driven in-process with router.submit) and one
              worker process running `echo`. One request = validation and admission, DATA out, the
              worker as above, DATA + ACK back, the core's bookkeeping, the output and done events
              through the request's event channel to the awaiting client coroutine (all of that
              client side runs in the router's process and is counted in its CPU).
  router-2    the same Router with two workers: `gen` (a fan-out yielding n copies) and `relay`
              (async identity). Each item crosses the router twice: gen -> router -> relay ->
              router -> client. Latency (n=1) minus router-1's is one replica-to-replica hop
              through the router; throughput is one request with a large fan-out.

Latency: one frame (request) in flight at a time, p50 and p99 in microseconds, and the CPU each
process spent per request meanwhile. Throughput: many in flight (a window of frames or requests;
the fan-out for router-2), items per second, where an item is one frame echoed (direct, bare),
one invocation acknowledged (worker), or one stage output delivered to the client (router).
"frames/s through the middle" counts the frames the middle process reads or writes per item:
bare 2 (client->echo, echo->client), router-1 3 (DATA out, DATA and ACK in), router-2 4 (DATA in
from gen, DATA out to relay, DATA and ACK in). "frames per CPU-s" divides those frames by the
middle process's own CPU time: what it would move with a core to itself. On 2 shared cores
the endpoints (which encode and decode every frame in Python) set the end-to-end pace, so the
goal "the router keeps a quarter of the bare loop's frames/s" is judged on both.
CPU columns are user+system time from /proc (10 ms ticks) divided by the items.

Memory (the router process, once per run): RSS and live Python objects after start, after a
warm-up, with 10k requests in flight (a stage that waits behind a gate), after they finish, and
every 100k finished requests up to 1M or a time budget (the count reached is reported), plus the
sizes of every container in the router, its core and the progress tracker.

Every process of the benchmark runs with MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ set as
the supervisor sets them for replicas (glibc would otherwise serve each large read buffer as a
fresh mmap, paid in page faults), the router's process included.

Placement: a wake-up on the other CPU costs ~25 us more than on the same one on this machine
class, and left alone the scheduler places a trial's processes differently from one repetition to the
next (a router-1 p50 of 165 us in one repetition, 250-280 us in the others). With --pin the
middle process (router or forwarder; the client for direct and worker) has CPU 0 to itself and
the other processes share the rest, the way a router is deployed: every hop crosses CPUs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _stats import interleaved
from routerbench.analysis import analyse, goals
from routerbench.breakdown import breakdown_trial
from routerbench.common import DEFAULT_MD, DEFAULT_OUT, MALLOC_ENV, ROOT, SETTINGS, SYSTEMS, WHAT, \
    child_cmd, have_uvloop, run_loop
from routerbench.endpoints import bare_trial, direct_trial, echo_main, forward_main
from routerbench.memory import memory_trial
from routerbench.report import markdown, tables
from routerbench.served import router_trial


def run_trial(kind: str, params: dict, timeout: float) -> dict:
    env = {**os.environ, **(MALLOC_ENV if params.get("malloc_env", True) else {})}
    proc = subprocess.run(child_cmd("--role", "trial", "--system", kind, "--params", json.dumps(params),
                                    "--loops", params["loop"]),
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"trial {kind} ({params['loop']}) failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    from google.protobuf import __version__ as protobuf_version
    from google.protobuf.internal import api_implementation

    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = "not installed"
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "processor": model, "cpus": os.cpu_count(),
            "python": platform.python_version(), "protobuf": f"{protobuf_version} ({api_implementation.Type()})",
            "uvloop": uv}


def orchestrate(args: argparse.Namespace, argv: list[str]) -> dict:
    setting = dict(SETTINGS["quick" if args.quick else "full"])
    if args.repeat is not None:
        setting["repeat"] = args.repeat
    if args.memory_budget is not None:
        setting["mem_budget_s"] = args.memory_budget
    repeat = setting.pop("repeat")
    setting["malloc_env"] = not args.no_malloc_env
    setting["pin"] = args.pin
    if not args.quick and repeat < 3:
        raise SystemExit("--repeat must be at least 3: every number is a median over the repetitions")
    if args.loops == "both":
        loops = ["uvloop", "asyncio"] if have_uvloop() else ["asyncio"]
    elif args.loops == "auto":
        loops = ["uvloop" if have_uvloop() else "asyncio"]
    else:
        loops = [args.loops]
    systems = [s for s in SYSTEMS if s in args.systems.split(",")]
    timeout = 120 if args.quick else 600

    def report(rep: int, variant: tuple[str, str], res: dict, seconds: float) -> None:
        loop, system = variant
        print(f"rep {rep + 1}/{repeat} {loop:7} {system:8}  p50 {res['latency_us']['p50']:8.1f} us  "
              f"p99 {res['latency_us']['p99']:8.1f} us  {res['items_per_s']:>10,.0f} items/s  "
              f"({seconds:.1f} s)", flush=True)

    runs = interleaved(repeat, [(loop, system) for loop in loops for system in systems],
                       lambda v: run_trial(v[1], {**setting, "loop": v[0]}, timeout), report)
    trials = {loop: {system: runs[(loop, system)] for system in systems} for loop in loops}
    result: dict[str, Any] = {
        "benchmark": "router",
        "command": " ".join(["python", "benchmarks/router.py", *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "repeat": repeat, "settings": setting,
        "malloc_env": MALLOC_ENV if setting["malloc_env"] else {},
        "what": WHAT, "loops": {},
    }
    for loop in loops:
        memory = None
        if not args.no_memory and loop == loops[0]:  # the long one: once, on the preferred loop
            t = time.perf_counter()
            memory = run_trial("memory", {**setting, "loop": loop, "tracemalloc": True},
                               timeout + setting["mem_budget_s"] * 2)
            print(f"memory  {loop:7}  {memory['finished']:,} requests ({time.perf_counter() - t:.1f} s)", flush=True)
        analysis = analyse(trials[loop])
        result["loops"][loop] = {"trials": trials[loop], "analysis": analysis, "memory": memory,
                                 "goals": goals(analysis, memory)}
    t = time.perf_counter()
    result["breakdown"] = run_trial("breakdown", {**setting, "loop": loops[0]}, timeout)
    result["breakdown"]["loop"] = loops[0]
    print(f"breakdown {loops[0]} ({time.perf_counter() - t:.1f} s)", flush=True)
    if args.profile:
        loop = loops[0]
        prof = {}
        for system in ("router-1", "router-2"):
            res = run_trial(system, {**setting, "loop": loop, "profile": True}, timeout)
            for r in res["profile"]:
                r["items"] = res["items"]
            prof[f"{system} throughput ({loop})"] = res["profile"]
        result["profile"] = prof
    return result


def child(args: argparse.Namespace) -> None:
    loop = args.loops
    if args.role == "echo":
        run_loop(loop, echo_main(args.connect))
    elif args.role == "forward":
        run_loop(loop, forward_main(args.connect))
    elif args.role == "trial":
        p = json.loads(args.params)
        coro = {
            "direct": lambda: direct_trial(p),
            "worker": lambda: direct_trial(p, worker=True),
            "bare": lambda: bare_trial(p),
            "router-1": lambda: router_trial(p, "one"),
            "router-2": lambda: router_trial(p, "two"),
            "memory": lambda: memory_trial(p),
            "breakdown": lambda: breakdown_trial(p),
        }[args.system]()
        result = run_loop(p["loop"], coro)
        print(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny setting for the test suite")
    ap.add_argument("--repeat", type=int, default=None, help="repetitions (>= 3; default 5; --quick: 1)")
    ap.add_argument("--loops", default="auto", help="uvloop, asyncio, both, or auto (uvloop if installed)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS))
    ap.add_argument("--memory-budget", type=float, default=None, help="seconds for the 1M-request phase (180)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    ap.add_argument("--no-malloc-env", action="store_true",
                    help="run every process with glibc's default malloc thresholds")
    ap.add_argument("--profile", action="store_true", help="also cProfile the router process (router-1, router-2)")
    ap.add_argument("--pin", action="store_true",
                    help="pin the router (or forwarder) to the first CPU alone, the other processes to the rest")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON results")
    ap.add_argument("--markdown", nargs="?", const=DEFAULT_MD, type=Path, default=None,
                    help="do not run: write the markdown report (default docs/benchmarks-router.md) from --out")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--system", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    ap.add_argument("--connect", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role:
        child(args)
        return
    if args.markdown is not None:
        result = json.loads(args.out.read_text())
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(result))
        print(f"wrote {args.markdown} from {args.out}")
        return
    result = orchestrate(args, argv)
    print()
    print(tables(result, md=False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
