"""Faults and hostile inputs against a served pipeline under load: nothing hangs, nothing is wrong.

    python benchmarks/faults.py                     # the full run, to benchmarks/results/faults.json
    python benchmarks/faults.py --quick --out X.json   # tiny setting, what the test suite runs
    python benchmarks/faults.py --only kill-aggregate,sigstop-tcp

It serves benchmarks/apps/faults.py with ``altoflow serve`` on 127.0.0.1 (a subprocess, its
``checked`` stage ``--remote`` on two ``altoflow worker --connect`` processes over TCP with a
shared secret), and runs one scenario after another, each under Poisson load from
benchmarks/loadgen.py (seed = the scenario's number) while the fault is done to it:

  baseline          no fault
  kill-map          kill -9 of a replica of the stateless map ``scored``, twice
  kill-fanout       kill -9 of a replica of the fan-out ``items`` (its generators pause)
  kill-aggregate    kill -9 of each replica of the aggregate ``total``, one after the other
  kill-tcp          kill -9 of a TCP worker of ``checked``; restarted after a second, as an
                    operator's process manager would
  sigstop           SIGSTOP of a ``scored`` replica: the router hears no heartbeat for 5 s,
                    marks it down (``/healthz`` names it ``silent``), the supervisor kills it
  sigstop-tcp       SIGSTOP of a TCP worker; once ``/healthz`` names it, SIGCONT: it finds its
                    connection closed and exits, and is started again
  poison            some requests carry an item whose ``guarded`` replica calls os._exit:
                    each must end in ``ReplicaDied`` after 2 deaths, the others be correct
  slow-readers      clients that send a long request and read nothing for a while, then read
                    it all (router memory is what this shows)
  huge-fanout       one request whose fan-out yields --huge items, beside the load
  hostile-bodies    a huge body, nesting 100k deep, a 5000-digit int, 80k unknown keys, bad
                    JSON, a chunked body past the limit, a text/plain body and a foreign Host

Each request is then one of: correct (it ended with ``done`` and its outputs, each once, are
what ``altoflow.run`` returns in this process for the same fields), clean error (a documented
``error`` event: ``ReplicaDied``; or a 4xx/503 answer of at most 64 KiB), hung (no end within
--deadline seconds) or wrong (anything else: other outputs, a duplicate, a 500, a stream cut
short). Router RSS is the ``altoflow serve`` process' VmRSS (/proc), sampled every 50 ms: at the
scenario's start, its peak, and once the scenario is over and the server has settled. Between
scenarios the server must be healthy again (``/healthz`` 200) within --deadline seconds.

The JSON has the settings, per scenario the counts, the RSS numbers, what was done when (and
what ``/healthz`` said), and the first few wrong or hung requests; the table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from loadgen import run_load  # noqa: E402

APP = str(HERE / "apps" / "faults.py")
OUT = HERE / "results" / "faults.json"
CLEAN_ERRORS = {"ReplicaDied"}  # documented error events a fault may end a request with
MAX_ANSWER = 64 * 1024  # a 4xx answer larger than this is not clean (a 422 once echoed a body)


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid: int) -> int | None:
    """VmRSS of a live process in bytes, from /proc/<pid>/status."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def children(pid: int) -> list[int]:
    out = []
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
    return out


def replica_pid(serve_pid: int, stage: str, slot: int) -> int:
    """The pid of a local replica of ``altoflow serve``, found by its command line."""
    for pid in children(serve_pid):
        with contextlib.suppress(FileNotFoundError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"--stage" in argv and argv[argv.index(b"--stage") + 1] == stage.encode() \
                    and argv[argv.index(b"--slot") + 1] == str(slot).encode():
                return pid
    raise LookupError(f"no replica {stage}#{slot} under pid {serve_pid}")


class Server:
    """``altoflow serve`` of the app, and its TCP workers for ``checked``."""

    def __init__(self, workdir: Path, max_inflight: int) -> None:
        self.port, self.tcp_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.secret = workdir / "secret"
        self.secret.write_text("faults-benchmark-secret\n")
        self.env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.log = open(workdir / "serve.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "altoflow.cli", "serve", APP, "--host", "127.0.0.1",
             "--port", str(self.port), "--listen", f"127.0.0.1:{self.tcp_port}",
             "--secret-file", str(self.secret), "--remote", "checked",
             "--max-inflight", str(max_inflight), "--log-level", "warning"],
            env=self.env, stdout=self.log, stderr=self.log, cwd=ROOT)
        self.workers = {slot: self.start_worker(slot) for slot in range(2)}

    def start_worker(self, slot: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "altoflow.cli", "worker", "--target", APP, "--stage", "checked",
             "--slot", str(slot), "--connect", f"127.0.0.1:{self.tcp_port}",
             "--secret-file", str(self.secret), "--log-level", "warning"],
            env=self.env, stdout=self.log, stderr=self.log, cwd=ROOT)

    def replica(self, stage: str, slot: int) -> int:
        return replica_pid(self.proc.pid, stage, slot)

    def rss(self) -> int:
        return rss(self.proc.pid) or 0

    async def healthy(self, client: httpx.AsyncClient, timeout: float) -> float:
        """Seconds until /healthz answers 200 (raises past ``timeout``)."""
        start = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"faults: altoflow serve exited with {self.proc.returncode}; "
                                 f"see {self.log.name}")
            for slot, worker in self.workers.items():
                if worker.poll() is not None:  # a TCP worker exits when its router hangs up
                    self.workers[slot] = self.start_worker(slot)
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{self.url}/healthz")).status_code == 200:
                    return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise SystemExit(f"faults: the server was not healthy within {timeout} s")
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for worker in self.workers.values():
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        self.log.close()


# -- requests and what they should return ------------------------------------------------------


@dataclass
class Outcome:
    """One request: its fields, how it ended and the events it got."""

    fields: dict[str, Any]
    kind: str = "load"
    status: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    end: str | None = None  # done | error | http | broken; None: it never ended (hung)
    detail: str = ""
    answer_bytes: int = 0


class Reference:
    """What ``altoflow.run`` returns for each request's fields, in this process (cached)."""

    def __init__(self) -> None:
        import altoflow
        from altoflow.compiler import load_target

        self._run = altoflow.run
        self.outputs = [s.name for s in load_target(APP).compiled.plan.outputs]
        self._cache: dict[str, dict[tuple[str, tuple], Any]] = {}

    def __call__(self, fields: dict[str, Any]) -> dict[tuple[str, tuple], Any]:
        key = json.dumps(fields, sort_keys=True)
        if key not in self._cache:
            result = self._run(APP, **fields)
            self._cache[key] = {(stage, tuple(a.values())): v for stage in self.outputs
                                for a, v in result.items_with_ancestry(stage)}
        return self._cache[key]


def poisoned(fields: dict[str, Any]) -> bool:
    return 0 <= fields.get("poison", -1) < fields.get("n", 0)


def verdict(o: Outcome, reference: Reference) -> str:
    """correct, clean, hung or wrong (see the module's docstring)."""
    if o.end is None:
        return "hung"
    if o.end == "http":
        status = o.status or 0
        return "clean" if (400 <= status < 500 or status == 503) and o.answer_bytes <= MAX_ANSWER \
            else "wrong"
    if o.end == "error":
        return "clean" if o.events[-1].get("exc_type") in CLEAN_ERRORS else "wrong"
    if o.end != "done" or poisoned(o.fields):
        return "wrong"
    got = [(e["stage"], tuple(e["ancestry"].values())) for e in o.events if e["type"] == "output"]
    if len(got) != len(set(got)):
        return "wrong"  # an output twice
    values = {(e["stage"], tuple(e["ancestry"].values())): e["value"]
              for e in o.events if e["type"] == "output"}
    return "correct" if values == reference(o.fields) else "wrong"


def http_request(client: httpx.AsyncClient, url: str, outcomes: list[Outcome], kind: str = "load"):
    """A loadgen target that keeps every request's outcome in ``outcomes``."""

    def target(fields: dict[str, Any]):
        o = Outcome(dict(fields), kind)
        outcomes.append(o)

        async def events():
            try:
                async with client.stream("POST", f"{url}/v1/run", json=fields) as response:
                    o.status = response.status_code
                    if response.status_code != 200:
                        body = await response.aread()
                        o.end, o.answer_bytes, o.detail = "http", len(body), body[:200].decode(errors="replace")
                        return
                    async for line in response.aiter_lines():
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        o.events.append(event)
                        if event["type"] in ("done", "error"):  # before the yield: loadgen
                            o.end = event["type"]               # stops reading at an error
                            if event["type"] == "error":
                                o.detail = f"{event.get('exc_type')}: {str(event.get('error'))[:200]}"
                        yield event
                        if o.end is not None:
                            return
                o.end, o.detail = "broken", "the stream ended before done or error"
            except httpx.HTTPError as exc:
                o.end, o.detail = "broken", f"{type(exc).__name__}: {exc}"

        return events()

    return target


# -- scenarios ---------------------------------------------------------------------------------


@dataclass
class Context:
    server: Server
    client: httpx.AsyncClient
    args: argparse.Namespace
    outcomes: list[Outcome]
    log: list[dict[str, Any]]
    t0: float = 0.0

    def note(self, what: str, **detail: Any) -> None:
        self.log.append({"t_s": round(time.monotonic() - self.t0, 3), "what": what, **detail})

    async def health(self) -> dict[str, Any]:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            return (await self.client.get(f"{self.server.url}/healthz")).json()
        return {}

    async def until_health(self, pred: Callable[[dict], bool], timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = await self.health()
            if pred(h):
                return h
            await asyncio.sleep(0.1)
        return None


async def no_fault(ctx: Context) -> None:
    return None


def kill(stage: str, slots: list[int], gap: float) -> Callable[[Context], Awaitable[None]]:
    async def fault(ctx: Context) -> None:
        await asyncio.sleep(ctx.args.duration / 3)
        for slot in slots:
            pid = ctx.server.replica(stage, slot)
            os.kill(pid, signal.SIGKILL)
            ctx.note("kill -9", replica=f"{stage}#{slot}", pid=pid)
            await asyncio.sleep(gap)

    return fault


async def kill_tcp(ctx: Context) -> None:
    await asyncio.sleep(ctx.args.duration / 3)
    worker = ctx.server.workers[0]
    worker.kill()
    ctx.note("kill -9", replica="checked#0 (TCP)", pid=worker.pid)
    await asyncio.sleep(1.0)
    worker.wait()
    ctx.server.workers[0] = ctx.server.start_worker(0)
    ctx.note("restarted", replica="checked#0 (TCP)", pid=ctx.server.workers[0].pid)


async def sigstop(ctx: Context) -> None:
    await asyncio.sleep(ctx.args.duration / 4)
    pid = ctx.server.replica("scored", 0)
    os.kill(pid, signal.SIGSTOP)
    ctx.note("SIGSTOP", replica="scored#0", pid=pid)
    seen = await ctx.until_health(lambda h: "scored#0" in h.get("silent", []), ctx.args.deadline)
    ctx.note("healthz", silent=None if seen is None else seen.get("silent"),
             status=None if seen is None else seen.get("status"))
    with contextlib.suppress(ProcessLookupError):  # the supervisor has killed it by now
        os.kill(pid, signal.SIGCONT)


async def sigstop_tcp(ctx: Context) -> None:
    await asyncio.sleep(ctx.args.duration / 4)
    worker = ctx.server.workers[0]
    worker.send_signal(signal.SIGSTOP)
    ctx.note("SIGSTOP", replica="checked#0 (TCP)", pid=worker.pid)
    seen = await ctx.until_health(lambda h: "checked#0" in h.get("silent", []), ctx.args.deadline)
    ctx.note("healthz", silent=None if seen is None else seen.get("silent"),
             status=None if seen is None else seen.get("status"))
    worker.send_signal(signal.SIGCONT)
    ctx.note("SIGCONT", replica="checked#0 (TCP)")
    try:
        code = await asyncio.wait_for(asyncio.to_thread(worker.wait), ctx.args.deadline)
    except asyncio.TimeoutError:
        code = None
        worker.kill()
        worker.wait()
    ctx.note("exited", replica="checked#0 (TCP)", code=code)
    ctx.server.workers[0] = ctx.server.start_worker(0)


async def poison(ctx: Context) -> None:
    """Two poison requests, a second apart, beside the load: each kills both replicas of
    ``guarded`` once (it runs on one, then again on the other) and ends in ReplicaDied."""
    target = http_request(ctx.client, ctx.server.url, ctx.outcomes, "poison")

    async def one(delay: float) -> None:
        await asyncio.sleep(delay)
        ctx.note("poison request", poison=7)
        async for _ in target({**ctx.args.load, "poison": 7}):
            pass

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(one(ctx.args.duration / 4), one(ctx.args.duration / 4 + 1)),
                               ctx.args.deadline)


async def slow_readers(ctx: Context) -> None:
    """Clients that send a long request, read nothing for --stall s, then read it all."""
    fields = {"n": ctx.args.slow_n}

    async def one() -> None:
        o = Outcome(fields, "slow reader")
        ctx.outcomes.append(o)
        body = json.dumps(fields).encode()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", ctx.server.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        writer.write(b"POST /v1/run HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (ctx.server.port, len(body)) + body)
        await writer.drain()
        await asyncio.sleep(ctx.args.stall)
        conn, data = h11.Connection(h11.CLIENT), bytearray()
        conn.send(h11.Request(method="POST", target="/v1/run", headers=[("Host", "x"), ("Content-Length", str(len(body)))]))
        conn.send(h11.Data(data=body))
        conn.send(h11.EndOfMessage())
        timed_out = False
        try:
            try:
                while chunk := await asyncio.wait_for(reader.read(65536), ctx.args.deadline):
                    conn.receive_data(chunk)
                    while (event := conn.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
                        if isinstance(event, h11.Response):
                            o.status = event.status_code
                        elif isinstance(event, h11.Data):
                            data += event.data
            except asyncio.TimeoutError:
                timed_out = True  # nothing for --deadline s: it stays without an end (hung)
            lines = [json.loads(line) for line in bytes(data).splitlines()
                     if line.strip() and line.endswith(b"}")]  # not a line cut short
            o.events = lines
            if o.status != 200 and o.status is not None:
                o.end, o.answer_bytes = "http", len(data)
            elif lines and lines[-1]["type"] in ("done", "error"):
                o.end = lines[-1]["type"]
            elif o.status is not None and not timed_out:
                o.end, o.detail = "broken", f"{len(lines)} lines, no done or error"
        finally:
            writer.close()

    await asyncio.sleep(ctx.args.duration / 5)
    ctx.note("slow readers", count=ctx.args.slow_readers, n=ctx.args.slow_n, stall_s=ctx.args.stall)
    await asyncio.gather(*(one() for _ in range(ctx.args.slow_readers)))


async def huge_fanout(ctx: Context) -> None:
    await asyncio.sleep(ctx.args.duration / 5)
    ctx.note("huge fan-out", n=ctx.args.huge)
    events = http_request(ctx.client, ctx.server.url, ctx.outcomes, "huge fan-out")({"n": ctx.args.huge})

    async def read() -> None:
        async for _ in events:
            pass

    with contextlib.suppress(asyncio.TimeoutError):  # then it stays without an end: hung
        await asyncio.wait_for(read(), ctx.args.deadline * 4)


async def _chunks(chunk: bytes, count: int):
    for _ in range(count):  # no Content-Length: httpx sends it chunked
        yield chunk


HOSTILE: dict[str, tuple[dict[str, str], Callable[[], Any]]] = {
    "huge body (8 MiB)": ({}, lambda: json.dumps({"n": 1, "pad": "x" * (8 << 20)}).encode()),
    "nesting 100k deep": ({}, lambda: b'{"n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "int of 5000 digits": ({}, lambda: b'{"n": 1' + b"0" * 4999 + b"}"),
    "80k unknown keys": ({}, lambda: json.dumps({"n": 1, **{f"k{i}": 0 for i in range(80_000)}}).encode()),
    "not JSON": ({}, lambda: b'{"n": 1,'),
    "chunked past the limit": ({}, lambda: _chunks(b"[" + b"0," * 4096, 512)),
    "text/plain": ({"Content-Type": "text/plain"}, lambda: b'{"n": 1}'),
    "foreign Host": ({"Host": "evil.example"}, lambda: b'{"n": 1}'),
}


async def hostile_bodies(ctx: Context) -> None:
    await asyncio.sleep(ctx.args.duration / 5)
    for name, (headers, body) in HOSTILE.items():
        for _ in range(ctx.args.hostile_repeat):
            o = Outcome({"body": name}, "hostile")
            ctx.outcomes.append(o)
            try:
                answer = await asyncio.wait_for(ctx.client.post(
                    f"{ctx.server.url}/v1/run", content=body(),
                    headers={"Content-Type": "application/json", **headers}), ctx.args.deadline)
                o.status, o.answer_bytes, o.end = answer.status_code, len(answer.content), "http"
                o.detail = answer.text[:160]
            except asyncio.TimeoutError:
                pass  # hung
            except httpx.HTTPError as exc:
                o.end, o.detail = "broken", f"{type(exc).__name__}: {exc}"
        ctx.note("hostile", body=name, status=o.status, answer_bytes=o.answer_bytes)


@dataclass
class Scenario:
    name: str
    fault: Callable[[Context], Awaitable[None]]


SCENARIOS = [
    Scenario("baseline", no_fault),
    Scenario("kill-map", kill("scored", [0, 1], 1.0)),
    Scenario("kill-fanout", kill("items", [0, 1], 1.0)),
    Scenario("kill-aggregate", kill("total", [0, 1], 1.0)),
    Scenario("kill-tcp", kill_tcp),
    Scenario("sigstop", sigstop),
    Scenario("sigstop-tcp", sigstop_tcp),
    Scenario("poison", poison),
    Scenario("slow-readers", slow_readers),
    Scenario("huge-fanout", huge_fanout),
    Scenario("hostile-bodies", hostile_bodies),
]


async def run_scenario(number: int, scenario: Scenario, server: Server, client: httpx.AsyncClient,
                       args: argparse.Namespace, reference: Reference) -> dict[str, Any]:
    ctx = Context(server, client, args, [], [])
    recovered = await server.healthy(client, args.deadline)
    await asyncio.sleep(0.5)
    before = server.rss()
    peak = before
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, server.rss())
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    ctx.t0 = time.monotonic()
    fault = asyncio.create_task(scenario.fault(ctx))
    load = await run_load(http_request(client, server.url, ctx.outcomes), [args.load],
                          rate=args.rate, duration=args.duration, seed=number,
                          max_in_flight=args.max_in_flight, timeout=args.deadline)
    await fault
    wall = time.monotonic() - ctx.t0
    await server.healthy(client, args.deadline)
    await asyncio.sleep(1.0)
    sampling = False
    await sampler
    after = server.rss()
    for o in ctx.outcomes:  # altoflow.run starts its own event loop: in a thread
        if o.end == "done" and not poisoned(o.fields):
            await asyncio.to_thread(reference, o.fields)
    counts = {"tried": len(ctx.outcomes), "correct": 0, "clean": 0, "hung": 0, "wrong": 0}
    bad = []
    for o in ctx.outcomes:
        v = verdict(o, reference)
        counts[v] += 1
        if v in ("hung", "wrong") and len(bad) < 5:
            bad.append({"verdict": v, "kind": o.kind, "fields": o.fields, "end": o.end,
                        "status": o.status, "detail": o.detail, "events": len(o.events)})
    clean_kinds: dict[str, int] = {}
    for o in ctx.outcomes:
        if verdict(o, reference) == "clean":
            key = f"HTTP {o.status}" if o.end == "http" else o.events[-1].get("exc_type", "?")
            clean_kinds[key] = clean_kinds.get(key, 0) + 1
    return {"scenario": scenario.name, **counts, "clean_kinds": clean_kinds,
            "rss_before": before, "rss_peak": peak, "rss_after": after,
            "wall_s": round(wall, 2), "recovered_before_s": round(recovered, 2),
            "load": load.summary() | {"records": None}, "faults": ctx.log, "bad": bad}


def table(rows: list[dict[str, Any]]) -> str:
    def mb(x: int) -> str:
        return f"{x / 2**20:.0f}"

    head = (f"{'scenario':<16} {'tried':>6} {'correct':>8} {'clean':>6} {'hung':>5} {'wrong':>6}"
            f"  {'RSS MB before/peak/after':>24}  clean errors")
    lines = [head, "-" * len(head)]
    for r in rows:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(r["clean_kinds"].items()))
        lines.append(f"{r['scenario']:<16} {r['tried']:>6} {r['correct']:>8} {r['clean']:>6} "
                     f"{r['hung']:>5} {r['wrong']:>6}  "
                     f"{mb(r['rss_before']) + ' / ' + mb(r['rss_peak']) + ' / ' + mb(r['rss_after']):>24}  {kinds}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    return {"cpu": model, "cpus": os.cpu_count(), "python": platform.python_version(),
            "os": platform.platform()}


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    wanted = args.only.split(",") if args.only else [s.name for s in SCENARIOS]
    unknown = set(wanted) - {s.name for s in SCENARIOS}
    if unknown:
        raise SystemExit(f"faults: no scenario {sorted(unknown)}; there are "
                         f"{', '.join(s.name for s in SCENARIOS)}")
    reference = Reference()
    rows = []
    with tempfile.TemporaryDirectory(prefix="altoflow-faults-") as tmp:
        server = Server(Path(tmp), args.max_inflight)
        try:
            limits = httpx.Limits(max_connections=args.max_in_flight + 16, max_keepalive_connections=64)
            timeout = httpx.Timeout(args.deadline * 10)  # the deadline is loadgen's, not httpx's
            async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
                await server.healthy(client, 180)
                for number, scenario in enumerate(SCENARIOS):
                    if scenario.name not in wanted:
                        continue
                    row = await run_scenario(number, scenario, server, client, args, reference)
                    rows.append(row)
                    print(f"{row['scenario']}: tried {row['tried']} correct {row['correct']} "
                          f"clean {row['clean']} hung {row['hung']} wrong {row['wrong']}",
                          file=sys.stderr, flush=True)
        finally:
            server.stop()
            log_tail = (Path(tmp) / "serve.log").read_text(errors="replace")[-4000:]
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "only")}
    return {
        "benchmark": "faults",
        "command": "python benchmarks/faults.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "settings": settings,
        "scenarios": rows,
        "goals": {"hung": sum(r["hung"] for r in rows), "wrong": sum(r["wrong"] for r in rows),
                  "met": all(r["hung"] == 0 and r["wrong"] == 0 for r in rows)},
        "serve_log_tail": log_tail,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny setting (the test suite's)")
    parser.add_argument("--only", help="scenarios to run, comma-separated (default: all)")
    parser.add_argument("--rate", type=float, help="load arrivals per second (default 15; quick 6)")
    parser.add_argument("--duration", type=float, help="seconds of load per scenario (default 12; quick 3)")
    parser.add_argument("--deadline", type=float, default=60.0,
                        help="seconds after which a request without an end counts as hung")
    parser.add_argument("--huge", type=int, help="items of the huge fan-out (default 30000; quick 2000)")
    parser.add_argument("--slow-readers", type=int, help="slow clients (default 4; quick 2)")
    parser.add_argument("--slow-n", type=int, help="items of a slow reader's request (default 20000; quick 500)")
    parser.add_argument("--stall", type=float, help="seconds a slow reader reads nothing (default 15; quick 2)")
    parser.add_argument("--out", default=str(OUT), help="the JSON to write")
    args = parser.parse_args(argv)
    quick = args.quick
    for name, full, small in [("rate", 15.0, 6.0), ("duration", 12.0, 3.0), ("huge", 30_000, 2000),
                              ("slow_readers", 4, 2), ("slow_n", 20_000, 500), ("stall", 15.0, 2.0)]:
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.max_in_flight = 256
    args.max_inflight = 1024
    args.hostile_repeat = 1 if quick else 3
    args.load = {"n": 20, "delay": 0.005, "pause": 0.002}
    record = asyncio.run(_main(args))
    print(table(record["scenarios"]))
    print(f"goal 0 hung, 0 wrong: {'met' if record['goals']['met'] else 'NOT met'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
