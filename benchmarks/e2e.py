"""End to end: the four example applications on five systems, under Poisson load on a simulated LM.

    python benchmarks/e2e.py                          # the full run (see --help for its size)
    python benchmarks/e2e.py --quick --out X.json     # tiny setting, what the test suite runs
    python benchmarks/e2e.py --plots-only             # redraw the PNGs from the JSON

Systems, for each application (examples/<app>/app.py):

  altoflow           ``altoflow serve`` (a subprocess), streaming: a stage's outputs go on as
                     they are produced. ``--placement inline`` (the default) serves it with
                     ``--inline all``: every replica in the router's process, one process
                     like the twin's and the floor's (the LM engines are the simulator's);
                     ``--placement processes`` gives each replica its own process.
  altoflow-barrier   the same with ``--barrier``: a stage's outputs go on when it ends.
  langgraph          the LangGraph twin (benchmarks/langgraph/<app>.py), served by
                     benchmarks/e2e_serve.py in a subprocess (uvicorn, NDJSON, as altoflow).
  floor              the hand-written asyncio version (benchmarks/floor/<app>.py), served the
                     same way: what a program with no framework costs.
  ideal              no system at all: the floor on a virtual clock (benchmarks/floor/ideal.py),
                     so only the simulated LM takes time; computed, not measured.

Serving the twin and the floor in a subprocess behind the same HTTP/NDJSON surface as
``altoflow serve`` is the fair choice: every measured system then pays for one HTTP server,
JSON events and its own process(es), and the load generator (this process) is outside all of
them. Every live system calls its own ``altoflow sim-lm --profile P`` subprocess through the
apps' ``ALTOFLOW_LM=openai`` with ``ALTOFLOW_LM_MODEL=sim/{pool}``, so each LM stage runs on its
pool of the profile. altoflow's replicas follow the profile's ``replicas`` (``bm25`` -> the
claim verifier's ``bm25`` stage, ``rerank`` -> its ``candidates``).

For each profile and application, the systems' servers and simulators start once and stay up
(starting a claim-verifier server takes seconds on two shared cores); then for each rate, in
increasing order, each repetition runs every system once, in an order rotated by repetition
(interleaved), each for ``--duration`` seconds of Poisson arrivals (seed = repetition) from
the same load generator (benchmarks/loadgen.py). The simulator is idle between runs; its
statistics are recorded per run as differences. CPU: user+system seconds (from /proc, clock
ticks) of the server's whole process tree during the run, the simulator and the load generator
excluded, divided by the requests completed.

``--lm inprocess`` gives every system the simulated LM inside its own process instead
(``ALTOFLOW_LM=sim``, ``ALTOFLOW_LM_PROFILE=P``; altoflow with ``--inline all`` only, so that
each system holds one deployment of the profile): no ``sim-lm``, no HTTP client per LM call.
The LM client is the same code in every system and costs more than any of them (py-spy:
``--cpu-profile``), so its noise hides their differences; in process the CPU per request is
the framework, the app's own code and the simulator's timers, and the systems' overheads above
the floor stand out of the noise. It measures CPU; latencies are the same model's.

Events: the twin and the floor send outputs and ``done``; altoflow also sends the claim
verifier's answer token by token (``partial`` events, 33 of its 37 a request). The load
generator asks altoflow for none (``/v1/run?partials=false``), so every system sends the same
events; ``--partials`` asks for them.

Writes the JSON (``records``: one per app, system, profile, rate and repetition, with the
fields ``app system profile rate rep p50_s p99_s first_output_p50_s throughput
cpu_s_per_request``; ``ideal``: the low-load ideal of each app, streaming and barrier, per
profile; ``runs``: per run, errors, drops and the simulator's counts) and the plots.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "benchmarks"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "floor"))

import ideal  # noqa: E402
from loadgen import http_target, run_load  # noqa: E402

APPS = ("claimverify", "ragmapreduce", "selfconsistency", "judgefilter")
LIVE = ("altoflow", "altoflow-barrier", "langgraph", "floor")
SYSTEMS = (*LIVE, "ideal")
PROFILES = ("paper", "unbounded")
RECORD_FIELDS = ("app", "system", "profile", "rate", "rep", "p50_s", "p99_s",
                 "first_output_p50_s", "throughput", "cpu_s_per_request")
# The profile's replica counts by the names of the stages they apply to, per app.
REPLICA_STAGES = {"claimverify": {"bm25": "bm25", "rerank": "candidates"}}
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system CPU seconds) of a live process, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and every descendant now alive, by pid."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            stats[int(entry)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out[pid] = stats[pid][1]
            todo += children.get(pid, [])
    return out


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two snapshots of a tree (a process born in between counts whole)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


class Server:
    """One system's server and its simulator, as subprocesses."""

    def __init__(self, app: str, system: str, profile: str, max_batch: int | None,
                 placement: str = "inline", fuse: bool = True, lm: str = "http",
                 partials: bool = False, root: Path = ROOT) -> None:
        self.app, self.system, self.profile, self.placement = app, system, profile, placement
        # The checkout whose altoflow and examples the server runs (benchmarks/versions.py
        # serves another version of the runtime beside this one).
        self.root = root
        self.lm = lm  # "http": an altoflow sim-lm subprocess; "inprocess": ALTOFLOW_LM=sim
        # Whether the load generator asks for altoflow's partial events (the claim verifier's
        # answer, token by token): the twin and the floor send none, so by default none is
        # asked for, and every system sends the same events.
        self.partials = partials
        self.fuse = fuse  # False: altoflow serve --no-fuse (every stage's invocations show)
        self.sim_port, self.port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        sim = [sys.executable, "-m", "altoflow.cli", "sim-lm", "--host", "127.0.0.1",
               "--port", str(self.sim_port), "--profile", profile]
        if max_batch is not None:
            sim += ["--max-batch", str(max_batch)]
        if lm == "inprocess":
            env = {**os.environ, "PYTHONPATH": str(root), "ALTOFLOW_LM": "sim",
                   "ALTOFLOW_LM_PROFILE": profile, "ALTOFLOW_RERANKER": "bm25"}
        else:
            env = {**os.environ, "PYTHONPATH": str(root), "ALTOFLOW_LM": "openai",
                   "ALTOFLOW_LM_URL": f"{self.sim_url}/v1", "ALTOFLOW_LM_MODEL": "sim/{pool}",
                   "ALTOFLOW_RERANKER": "bm25"}
        self.logs = open(os.devnull, "w")  # noqa: SIM115 - closed in stop()
        # The server's stderr goes to a file, read if it exits: a pipe nobody reads fills up
        # (64 KiB of log lines) and then blocks the server on its next line.
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.sim = (None if lm == "inprocess" else
                    subprocess.Popen(sim, env=env, stdout=self.logs, stderr=self.logs, cwd=ROOT))
        self.proc = subprocess.Popen(self.command(), env=env, stdout=self.logs,
                                     stderr=self.errors, cwd=root)

    def command(self) -> list[str]:
        if self.system in ("langgraph", "floor"):
            return [sys.executable, str(HERE / "e2e_serve.py"), self.system, self.app,
                    "--port", str(self.port)]
        cmd = [sys.executable, "-m", "altoflow.cli", "serve", f"examples/{self.app}/app.py",
               "--host", "127.0.0.1", "--port", str(self.port)]
        from altoflow.lm.sim import get_profile

        for name, stage in REPLICA_STAGES.get(self.app, {}).items():
            if name in get_profile(self.profile).replicas:
                cmd += ["--replicas", f"{stage}={get_profile(self.profile).replicas[name]}"]
        if self.placement == "inline":
            cmd += ["--inline", "all"]
        if self.system == "altoflow-barrier":
            cmd.append("--barrier")
        if not self.fuse:
            cmd.append("--no-fuse")
        return cmd

    async def ready(self, client: httpx.AsyncClient, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        urls = [f"{self.url}/healthz"] if self.sim is None else [
            f"{self.sim_url}/v1/models", f"{self.url}/healthz"]
        for url in urls:
            while True:
                for proc in self.procs():
                    if proc.poll() is not None:
                        err = self.stderr_tail() if proc is self.proc else ""
                        raise SystemExit(f"e2e: {self.system} for {self.app} exited: {err}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit(f"e2e: {self.system} for {self.app} not ready in {timeout} s")
                await asyncio.sleep(0.2)

    def stderr_tail(self, size: int = 3000) -> str:
        self.errors.seek(0)
        return self.errors.read().decode(errors="replace")[-size:]

    async def sim_stats(self, client: httpx.AsyncClient) -> dict[str, Any] | None:
        if self.sim is None:
            return None  # the engines are inside the server
        return (await client.get(f"{self.sim_url}/altoflow/stats")).json()

    def procs(self) -> list[subprocess.Popen]:
        return [self.proc] if self.sim is None else [self.proc, self.sim]

    def stop(self) -> None:
        for proc in self.procs():
            proc.terminate()
        for proc in self.procs():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.logs.close()
        self.errors.close()


# -- one run -----------------------------------------------------------------------------------


def inputs_of(app: str) -> list[dict[str, Any]]:
    return [json.loads((ROOT / "examples" / app / "input.json").read_text())]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def record_of(app: str, system: str, profile: str, rate: float, rep: int, summary: dict,
              cpu_s: float | None) -> dict[str, Any]:
    completed = summary["completed"]
    return {
        "app": app, "system": system, "profile": profile, "rate": rate, "rep": rep,
        "p50_s": summary["latency_s"]["p50"], "p99_s": summary["latency_s"]["p99"],
        "first_output_p50_s": summary["first_output_s"]["p50"],
        "throughput": summary["throughput_rps"],
        "cpu_s_per_request": None if cpu_s is None or not completed else cpu_s / completed,
    }


async def warm(server: Server, client: httpx.AsyncClient, inputs: list[dict]) -> None:
    """A few rounds of concurrent requests, so every replica has built its index and connected."""
    target = http_target(server.url, client, partials=server.partials)

    async def one() -> None:
        async for _ in target(dict(inputs[0])):
            pass

    await asyncio.gather(*(one() for _ in range(4)))


async def measure(server: Server, client: httpx.AsyncClient, inputs: list[dict], rate: float,
                  duration: float, rep: int) -> tuple[dict, dict]:
    sim_before = await server.sim_stats(client)
    sim_cpu_before = tree_cpu(server.sim.pid) if server.sim is not None else {}
    before = tree_cpu(server.proc.pid)
    run = await run_load(http_target(server.url, client, partials=server.partials), inputs,
                         rate=rate, duration=duration,
                         seed=rep, timeout=120.0)
    after = tree_cpu(server.proc.pid)
    sim_cpu_s = cpu_between(sim_cpu_before, tree_cpu(server.sim.pid)) if server.sim is not None else None
    sim_after = await server.sim_stats(client)
    summary = run.summary()
    cpu_s = cpu_between(before, after)
    record = record_of(server.app, server.system, server.profile, rate, rep, summary, cpu_s)
    detail = {key: record[key] for key in ("app", "system", "profile", "rate", "rep")} | {
        "sent": summary["sent"], "completed": summary["completed"], "errors": summary["errors"],
        "error_kinds": summary["error_kinds"], "dropped": summary["dropped"],
        "cpu_s": cpu_s, "processes": len(after), "sim_cpu_s": sim_cpu_s,
    }
    if sim_before is not None and sim_after is not None:
        detail["sim"] = {key: sim_after[key] - sim_before[key]
                         for key in ("submitted", "finished", "aborted", "queued", "tokens")}
        detail["sim_pools_queued"] = {name: pool["queued"] - sim_before["pools"][name]["queued"]
                                      for name, pool in sim_after["pools"].items()}
    return record, detail


# -- the benchmark -----------------------------------------------------------------------------


def low_load_ideal(apps: list[str], profiles: list[str],
                   max_batch: int | None = None) -> list[dict[str, Any]]:
    rows = []
    for profile in profiles:
        for app in apps:
            for barrier in (False, True):
                alone = ideal.one_request(app, inputs_of(app)[0], profile=profile, barrier=barrier,
                                          max_batch=max_batch)
                rows.append({"app": app, "profile": profile,
                             "mode": "barrier" if barrier else "streaming",
                             "latency_s": alone["latency_s"],
                             "first_output_s": alone["first_output_s"]})
    return rows


def ideal_records(app: str, profile: str, rate: float, rep: int, duration: float,
                  max_batch: int | None = None) -> dict:
    run = ideal.ideal_load(app, inputs_of(app), profile=profile, rate=rate, duration=duration,
                           seed=rep, max_batch=max_batch)
    return record_of(app, "ideal", profile, rate, rep, run.summary(), None)


async def series(app: str, profile: str, args: argparse.Namespace, out: dict) -> None:
    """Every system, rate and repetition of one application under one profile."""
    inputs = inputs_of(app)
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=30.0), limits=limits) as client:
        servers = {system: Server(app, system, profile, args.max_batch, args.placement,
                                  lm=args.lm, partials=args.partials)
                   for system in LIVE}
        try:
            t0 = time.monotonic()
            for server in servers.values():
                await server.ready(client)
            t1 = time.monotonic()
            # Warmed side by side (each one's requests mostly wait on the simulated LM).
            await asyncio.gather(*(warm(server, client, inputs) for server in servers.values()))
            print(f"{profile} {app}: servers ready in {t1 - t0:.0f} s, warm in "
                  f"{time.monotonic() - t1:.0f} s", flush=True)
            for rate in args.rates:
                for rep in range(args.reps):
                    order = LIVE[rep % len(LIVE):] + LIVE[: rep % len(LIVE)]
                    for system in order:
                        record, detail = await measure(servers[system], client, inputs, rate,
                                                       args.duration, rep)
                        out["records"].append(record)
                        out["runs"].append(detail)
                        _progress(record, detail)
                    _save(out, args.out)
        finally:
            for server in servers.values():
                server.stop()


def _progress(record: dict, detail: dict) -> None:
    def s(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    cpu = record["cpu_s_per_request"]
    print(f"{record['profile']:9} {record['app']:15} {record['system']:16} rate {record['rate']:<4} "
          f"rep {record['rep']} p50 {s(record['p50_s'])} p99 {s(record['p99_s'])} first "
          f"{s(record['first_output_p50_s'])} thr {s(record['throughput'])} cpu/req "
          f"{'-' if cpu is None else f'{cpu * 1000:.0f} ms'} errors {detail['errors']} "
          f"queued {detail['sim']['queued'] if 'sim' in detail else '-'}", flush=True)


def _save(out: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")


def machine() -> dict[str, Any]:
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    return {"cpu": model, "cpus": os.cpu_count(), "python": platform.python_version(),
            "os": platform.platform(), "load_before": os.getloadavg()[0]}


def simulator() -> dict[str, Any]:
    from dataclasses import asdict

    from altoflow.lm import TimingModel
    from altoflow.lm.sim import PROFILES as SIM_PROFILES

    return {"timing": asdict(TimingModel()),
            "profiles": {name: {"pools": {k: p.engines for k, p in prof.pools.items()},
                                "default": None if prof.default is None else prof.default.engines,
                                "replicas": dict(prof.replicas)}
                         for name, prof in SIM_PROFILES.items()}}


# -- where altoflow's CPU goes -----------------------------------------------------------------


def _collapsed_top(path: Path, n: int = 25) -> list[str]:
    """The functions with the most samples at the top of the stack (self) and anywhere (total)."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        samples += int(count)
        own[frames[-1]] = own.get(frames[-1], 0) + int(count)
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + int(count)
    lines = [f"{samples} samples", "", "self %  function (file:line)"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:n]:
        lines.append(f"{100 * count / max(samples, 1):5.1f}  {frame}")
    lines += ["", "total %  function (file:line)"]
    for frame, count in sorted(total.items(), key=lambda kv: -kv[1])[:n]:
        lines.append(f"{100 * count / max(samples, 1):5.1f}  {frame}")
    return lines


async def cpu_profile(args: argparse.Namespace) -> None:
    """py-spy on each of ``--apps`` under load, served by altoflow (its router and busiest
    worker) and by the LangGraph twin, one after the other; writes e2e_profile.txt."""
    profile, rate, seconds = args.profiles[0], args.profile_rate, args.profile_seconds
    lines = [f"py-spy record -r 100 --gil --nolineno (samples of the thread holding the GIL), "
             f"profile {profile}, altoflow placement {args.placement}, reranker bm25, Poisson "
             f"{rate} req/s for {seconds} s each; {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}",
             ""]
    for app in args.apps:
        for system in ("altoflow", "langgraph"):
            lines += await _profile_one(args, app, system, profile, rate, seconds)
    (args.out.parent / "e2e_profile.txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out.parent / 'e2e_profile.txt'}")


async def _profile_one(args: argparse.Namespace, app: str, system: str, profile: str,
                       rate: float, seconds: float) -> list[str]:
    inputs = inputs_of(app)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=30.0)) as client:
        server = Server(app, system, profile, args.max_batch, args.placement, lm=args.lm,
                        partials=args.partials)
        try:
            await server.ready(client)
            before = tree_cpu(server.proc.pid)
            await warm(server, client, inputs)
            after = tree_cpu(server.proc.pid)
            workers = {pid: cpu - before.get(pid, 0.0) for pid, cpu in after.items()
                       if pid != server.proc.pid}
            tmp = args.out.parent
            spies = {"server": (server.proc.pid, tmp / "e2e_profile_server.collapsed")}
            worker_cmd = ""
            if workers:  # none with --placement inline: every replica is in the router's process
                busiest = max(workers, key=workers.get)
                with open(f"/proc/{busiest}/cmdline") as f:
                    worker_cmd = f.read().replace("\0", " ").strip()
                spies["worker"] = (busiest, tmp / "e2e_profile_worker.collapsed")
            procs = [subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(int(seconds)),
                                       "-r", "100", "--gil", "--nolineno", "-f", "raw", "-o",
                                       str(path)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for pid, path in spies.values()]
            before = tree_cpu(server.proc.pid)
            run = await run_load(http_target(server.url, client, partials=server.partials),
                                 inputs, rate=rate,
                                 duration=seconds, seed=0)
            after = tree_cpu(server.proc.pid)
            for proc in procs:
                proc.wait(timeout=60)
        finally:
            server.stop()
    summary = run.summary()
    cpu = cpu_between(before, after) / max(summary["completed"], 1)
    command = " ".join(server.command()[1:]).replace(str(HERE) + "/", "benchmarks/")
    lines = []
    for name, (_pid, path) in spies.items():
        what = f"{app} on {system}: " + (
            f"{command} (the server's own process)" if name == "server" else
            f"the busiest worker during warm-up: {worker_cmd}")
        lines += [f"== {what}", "",
                  f"{summary['completed']} requests, p50 {summary['latency_s']['p50']:.3f} s, "
                  f"CPU {cpu * 1000:.1f} ms per request (every process of the server)", ""]
        lines += _collapsed_top(path) if path.exists() else ["(py-spy wrote nothing)"]
        lines.append("")
        path.unlink(missing_ok=True)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", nargs="+", default=list(APPS), choices=APPS)
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=PROFILES)
    parser.add_argument("--rates", nargs="+", type=float, default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals a run")
    parser.add_argument("--series", nargs="+", default=None, metavar="PROFILE/APP",
                        help="run these (profile, app) pairs in this order instead of every "
                        "profile with every app, e.g. paper/claimverify unbounded/claimverify")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="every simulated engine's batch limit (default: the timing model's)")
    parser.add_argument("--placement", choices=("inline", "processes"), default="inline",
                        help="altoflow's replicas: all in the router's process (--inline all), or "
                        "each in its own process")
    parser.add_argument("--lm", choices=("http", "inprocess"), default="http",
                        help="the simulated LM: an altoflow sim-lm subprocess per system over "
                        "HTTP, or inside each system's process (measures the systems' CPU without "
                        "the LM client's; --placement inline only)")
    parser.add_argument("--partials", action="store_true",
                        help="ask altoflow for its partial events too (the claim verifier's answer "
                        "token by token, which the twin and the floor do not send); by default "
                        "every system is asked for outputs and done only (/v1/run?partials=false)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny: the claim verifier, paper profile, 1 req/s for 3 s, 1 rep")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "e2e.json")
    parser.add_argument("--plots", type=Path, default=None,
                        help="where the PNGs go (default: next to --out)")
    parser.add_argument("--plots-only", action="store_true")
    parser.add_argument("--cpu-profile", action="store_true",
                        help="only profile each of --apps (under the first of --profiles) with "
                        "py-spy, on altoflow (its router and busiest worker) and on the LangGraph "
                        "twin (writes e2e_profile.txt next to --out)")
    parser.add_argument("--profile-rate", type=float, default=3.0)
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    if args.lm == "inprocess" and (args.placement != "inline" or args.max_batch is not None):
        parser.error("--lm inprocess needs --placement inline (one deployment of the profile "
                     "per system) and the profile's own batch limit (no --max-batch)")
    if args.cpu_profile:
        asyncio.run(cpu_profile(args))
        return
    if args.quick:
        args.apps, args.profiles, args.rates, args.reps, args.duration = (
            ["claimverify"], ["paper"], [1.0], 1, 3.0)
    pairs = [(p, a) for p in args.profiles for a in args.apps]
    if args.series:
        pairs = [tuple(pair.split("/", 1)) for pair in args.series]
        for profile, app in pairs:
            if profile not in PROFILES or app not in APPS:
                parser.error(f"--series takes PROFILE/APP with PROFILE one of {PROFILES} and APP "
                             f"one of {APPS}, got {profile}/{app}")
        args.apps = [a for a in APPS if any(a == app for _, app in pairs)]
        args.profiles = [p for p in PROFILES if any(p == prof for prof, _ in pairs)]
    plots = args.plots or args.out.parent
    if args.plots_only:
        draw(json.loads(args.out.read_text()), plots, args.out.stem)
        return
    os.environ.setdefault("ALTOFLOW_RERANKER", "bm25")
    out: dict[str, Any] = {
        "benchmark": "e2e",
        "command": "python benchmarks/e2e.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "settings": {"apps": args.apps, "profiles": args.profiles, "rates": args.rates,
                     "reps": args.reps, "duration_s": args.duration, "max_batch": args.max_batch,
                     "placement": args.placement, "lm": args.lm, "partials": args.partials,
                     "reranker": "bm25", "systems": list(SYSTEMS)},
        "simulator": simulator(),
        "series": [f"{p}/{a}" for p, a in pairs],
        "ideal": low_load_ideal(args.apps, args.profiles, args.max_batch),
        "records": [],
        "runs": [],
    }
    started = time.monotonic()
    for profile, app in pairs:
        for rate in args.rates:
            for rep in range(args.reps):
                out["records"].append(ideal_records(app, profile, rate, rep, args.duration,
                                                    args.max_batch))
    for profile, app in pairs:
        asyncio.run(series(app, profile, args, out))
    out["wall_s"] = time.monotonic() - started
    _save(out, args.out)
    draw(out, plots, args.out.stem)
    print(f"wrote {args.out} in {out['wall_s']:.0f} s")


# -- plots -------------------------------------------------------------------------------------


def medians(records: list[dict], key: str) -> Iterator[tuple[tuple, float | None]]:
    """Per (app, system, profile, rate): the median of ``key`` over the repetitions."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        groups.setdefault((r["app"], r["system"], r["profile"], r["rate"]), [])
        if r[key] is not None:
            groups[(r["app"], r["system"], r["profile"], r["rate"])].append(r[key])
    for group, values in groups.items():
        yield group, _median(values)


def draw(out: dict, where: Path, stem: str = "e2e") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = out["records"]
    apps = [a for a in APPS if any(r["app"] == a for r in records)]
    profiles = [p for p in PROFILES if any(r["profile"] == p for r in records)]
    p50 = dict(medians(records, "p50_s"))
    thr = dict(medians(records, "throughput"))
    cpu = dict(medians(records, "cpu_s_per_request"))
    where.mkdir(parents=True, exist_ok=True)
    for app in apps:
        fig, axes = plt.subplots(1, len(profiles), figsize=(5.5 * len(profiles), 4), squeeze=False)
        for ax, profile in zip(axes[0], profiles):
            for system in SYSTEMS:
                keys = sorted((k for k in p50 if k[:3] == (app, system, profile)), key=lambda k: k[3])
                points = [(thr[k], p50[k]) for k in keys if thr[k] is not None and p50[k] is not None]
                if points:
                    ax.plot(*zip(*points), marker="o", label=system,
                            linestyle="--" if system == "ideal" else "-")
            ax.set_title(f"{app}, profile {profile}")
            ax.set_xlabel("achieved load (requests/s)")
            ax.set_ylabel("p50 latency (s)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(where / f"{stem}_latency_{app}.png", dpi=90)
        plt.close(fig)
    fig, axes = plt.subplots(1, len(profiles), figsize=(5.5 * len(profiles), 4), squeeze=False)
    for ax, profile in zip(axes[0], profiles):
        width = 0.8 / len(LIVE)
        for i, system in enumerate(LIVE):
            values = []
            for app in apps:
                per_rate = [v for k, v in cpu.items() if k[:3] == (app, system, profile) and v is not None]
                values.append(1000 * statistics.median(per_rate) if per_rate else 0.0)
            ax.bar([j + i * width for j in range(len(apps))], values, width, label=system)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(apps))], apps, fontsize=8)
        ax.set_ylabel("CPU ms per request (median over rates)")
        ax.set_title(f"server CPU per request, profile {profile}")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(where / f"{stem}_cpu.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
