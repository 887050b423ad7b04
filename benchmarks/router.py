"""The runtime's own cost (benchmarks.md section 2): one router hop against two processes talking directly.

    python benchmarks/router.py                      # full run, about 10 minutes on 2 vCPUs
    python benchmarks/router.py --loops both         # uvloop and asyncio, interleaved
    python benchmarks/router.py --quick --out X.json # tiny setting, what the test suite runs
    python benchmarks/router.py --markdown           # docs/benchmarks-router.md from the JSON

Systems, measured side by side in one run, interleaved (A B C D E A B C D E ...), each
repetition with fresh processes; every number is the median and min-max over the repetitions:

  direct      a client and an echo process over one UNIX socket. The client encodes each frame
              with frames.encode_frame, the echo decodes it (FrameReader.feed) and answers with a
              new frame (FrameWriter, one write per event-loop turn). The floor.
  worker      the same client speaking the router's side of the protocol straight to a real
              altoflow worker (python -m altoflow.runtime.worker) running benchmarks/apps/echo.py
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
the supervisor sets them for replicas (perf-notes.md), the router's process included.

Placement: a wake-up on the other CPU costs ~25 us more than on the same one (perf-notes.md),
and left alone the scheduler places a trial's processes differently from one repetition to the
next (a router-1 p50 of 165 us in one repetition, 250-280 us in the others). With --pin the
middle process (router or forwarder; the client for direct and worker) has CPU 0 to itself and
the other processes share the rest, the way a router is deployed: every hop crosses CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "benchmarks" / "apps" / "echo.py"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "router.json"
DEFAULT_MD = ROOT / "docs" / "benchmarks-router.md"
PAYLOAD = bytes(range(100))  # perf-notes.md: frames of 4 + ~35 + 100 bytes
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


# -- small helpers ---------------------------------------------------------------------------


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


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def child_cmd(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


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


# -- the echo and the bare forwarder (child processes) ---------------------------------------


async def echo_main(path: str) -> None:
    """Connects to `path`, says HELLO (stage 1), answers every DATA frame with a new one (stage 0)."""
    from altoflow import wire as fr

    loop = asyncio.get_running_loop()
    done = loop.create_future()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.reader = fr.FrameReader()
            self.writer = fr.FrameWriter()
            self.scheduled = False

        def data_received(self, data: bytes) -> None:
            send = self.writer.send_nowait
            for f in self.reader.feed(data):
                if f.kind == fr.Kind.DATA:
                    send(fr.Kind.DATA, stage=0, request_id=f.request_id, ancestry=f.ancestry,
                         payload=f.payload)
            if not self.scheduled:  # one write per event-loop turn, as the worker does
                self.scheduled = True
                loop.call_soon(self.flush)

        def flush(self) -> None:
            self.scheduled = False
            data = self.writer.flush()
            if data and not self.transport.is_closing():
                self.transport.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if not done.done():
                done.set_result(None)

    transport, _ = await loop.create_unix_connection(Echo, path)
    transport.write(fr.encode_frame(fr.Kind.HELLO, stage=1, body=fr.Hello(stage="echo", slot=1)))
    await done


async def forward_main(path: str) -> None:
    """The bare forwarder: header split, destination by the header's stage, original bytes out.

    Connections announce themselves with a HELLO whose header stage is their address (client 0,
    echo 1); the client gets READY once both are there. Writes are coalesced into one buffer
    per destination socket and written once per event-loop turn. Nothing else.
    """
    from altoflow import wire as fr

    loop = asyncio.get_running_loop()
    done = loop.create_future()
    conns: dict[int, Fwd] = {}
    dirty: list[Fwd] = []
    scheduled = False

    def flush() -> None:
        nonlocal scheduled
        scheduled = False
        for conn in dirty:
            conn.dirty = False
            data = conn.writer.flush()
            if data:
                conn.transport.write(data)
        dirty.clear()

    class Fwd(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.reader = fr.FrameReader()
            self.writer = fr.FrameWriter()
            self.dirty = False
            self.address: int | None = None

        def data_received(self, data: bytes) -> None:
            nonlocal scheduled
            for header, raw in self.reader.feed_raw(data):
                dest = conns.get(header.stage)
                if header.kind == fr.Kind.HELLO:
                    self.address = header.stage
                    conns[header.stage] = self
                    if 0 in conns and 1 in conns:
                        dest = conns[0]
                        raw = fr.encode_frame(fr.Kind.READY, body=fr.Ready(0))
                    else:
                        continue
                if dest is None:
                    continue
                dest.writer.write_nowait(raw)
                if not dest.dirty:
                    dest.dirty = True
                    dirty.append(dest)
            if dirty and not scheduled:
                scheduled = True
                loop.call_soon(flush)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.address == 0 and not done.done():
                done.set_result(None)

    server = await loop.create_unix_server(Fwd, path)
    await done
    for conn in list(conns.values()):
        conn.transport.close()
    server.close()


# -- the client of direct and bare ------------------------------------------------------------


class ClientProto(asyncio.Protocol):
    """The client end of direct, bare and worker: frames in, handed to `handler` once ready.

    `ready` is set by the peer's HELLO (direct, worker: a worker is answered READY) or by the
    forwarder's READY (bare).
    """

    def __init__(self, connected: asyncio.Future | None = None, answer_hello: bool = False) -> None:
        from altoflow import wire as fr

        self.fr = fr
        self.reader = fr.FrameReader()
        self.ready = asyncio.get_running_loop().create_future()
        self.connected = connected
        self.answer_hello = answer_hello
        self.handler: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.connected is not None and not self.connected.done():
            self.connected.set_result(self)

    def data_received(self, data: bytes) -> None:
        frames = self.reader.feed(data)
        if not self.ready.done():
            fr = self.fr
            if any(f.kind in (fr.Kind.HELLO, fr.Kind.READY) for f in frames):
                if self.answer_hello:  # a real worker waits for READY with its stage index
                    self.transport.write(fr.encode_frame(fr.Kind.READY, body=fr.Ready(0)))
                self.ready.set_result(None)
            frames = [f for f in frames if f.kind in (fr.Kind.DATA, fr.Kind.ACK)]
            if not frames:
                return
        self.handler(frames)


class Peer:
    """What the client sends and what ends an item: the echo answers DATA with DATA; a real
    worker answers DATA (a codec payload, request-level ancestry) with an output DATA and an ACK."""

    def __init__(self, fr: Any, worker: bool) -> None:
        self.worker = worker
        self.done_kind = fr.Kind.ACK if worker else fr.Kind.DATA
        if worker:
            from altoflow.wire import Codec

            payload = Codec().encode(PAYLOAD)
            self.frame = lambda i: fr.encode_frame(fr.Kind.DATA, stage=0, request_id=i, payload=payload)
        else:
            self.frame = lambda i: fr.encode_frame(fr.Kind.DATA, stage=1, request_id=i, ancestry=(1,),
                                                   payload=PAYLOAD)


async def client_latency(proto: ClientProto, peer: Peer, n: int, warm: int) -> list[float]:
    loop = asyncio.get_running_loop()
    samples = []
    write = proto.transport.write
    done_kind = peer.done_kind
    frame = peer.frame
    for i in range(warm + n):
        fut = loop.create_future()

        def handler(frames: list, fut: asyncio.Future = fut) -> None:
            for f in frames:
                if f.kind == done_kind and not fut.done():
                    fut.set_result(f)

        proto.handler = handler
        t0 = time.perf_counter_ns()
        write(frame(i + 1))
        f = await fut
        t1 = time.perf_counter_ns()
        if f.request_id != i + 1 or (not peer.worker and f.payload != PAYLOAD) or (peer.worker and f.status):
            raise RuntimeError(f"wrong answer: {f}")
        if i >= warm:
            samples.append((t1 - t0) / 1000)
    return samples


async def client_throughput(proto: ClientProto, peer: Peer, total: int, window: int) -> float:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    done_kind = peer.done_kind
    frame = peer.frame
    sent = 0
    received = 0

    def send(k: int) -> None:
        nonlocal sent
        first = sent
        sent += k
        proto.transport.write(b"".join([frame(first + j + 1) for j in range(k)]))

    def handler(frames: list) -> None:
        nonlocal received
        k = 0
        for f in frames:
            if f.kind == done_kind:
                k += 1
        received += k
        if received >= total:
            if not done.done():
                done.set_result(None)
            return
        k = min(k, total - sent)
        if k:
            send(k)

    proto.handler = handler
    t0 = time.perf_counter()
    send(min(window, total))
    await done
    return total / (time.perf_counter() - t0)


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


async def measure_client(proto: ClientProto, p: dict, pids: list[int], worker: bool = False,
                         middle: int = 0) -> dict:
    await asyncio.wait_for(proto.ready, 30)
    pin(pids, p, middle)
    peer = Peer(proto.fr, worker)
    await client_latency(proto, peer, 0, p["latency_warm"])
    before = [cpu_seconds(pid) for pid in pids]
    lat = await client_latency(proto, peer, p["latency_n"], 0)
    lat_cpu = [cpu_seconds(pid) - b for pid, b in zip(pids, before)]
    await client_throughput(proto, peer, min(p["frames"], 5 * p["window"]), p["window"])  # warm-up
    before = [cpu_seconds(pid) for pid in pids]
    rate = await client_throughput(proto, peer, p["frames"], p["window"])
    cpu = [cpu_seconds(pid) - b for pid, b in zip(pids, before)]
    return {"latency_us": latency_record(lat, lat_cpu), "items_per_s": rate, "items": p["frames"],
            "cpu_s": cpu}


async def direct_trial(p: dict, worker: bool = False) -> dict:
    """The client and an echo process (or, with `worker`, a real altoflow worker), one socket."""
    loop = asyncio.get_running_loop()
    tmp = tempfile.mkdtemp(prefix="altoflow-bench-")
    path = os.path.join(tmp, "direct.sock")
    connected = loop.create_future()
    server = await loop.create_unix_server(lambda: ClientProto(connected, answer_hello=worker), path)
    if worker:
        cmd = worker_cmd(f"{APP}:one", "echo", path, p["loop"])
    else:
        cmd = child_cmd("--role", "echo", "--connect", path, "--loops", p["loop"])
    echo = subprocess.Popen(cmd, start_new_session=True)
    try:
        proto = await asyncio.wait_for(connected, 60)
        result = await measure_client(proto, p, [os.getpid(), echo.pid], worker)
        result["cpu_processes"] = ["client", "worker:echo" if worker else "echo"]
        proto.transport.close()
        await stop(echo)
    finally:
        if echo.poll() is None:
            echo.kill()
        server.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def worker_cmd(target: str, stage: str, path: str, loop: str) -> list[str]:
    argv = ["--target", target, "--stage", stage, "--slot", "0", "--connect", path]
    if loop == "uvloop":
        return [sys.executable, "-m", "altoflow.runtime.worker", *argv]
    # The worker picks uvloop whenever it can import it: hide it.
    return [sys.executable, "-c", "import sys; sys.modules['uvloop'] = None; "
            "from altoflow.runtime.worker import main; main(sys.argv[1:])", *argv]


async def bare_trial(p: dict) -> dict:
    from altoflow import wire as fr

    loop = asyncio.get_running_loop()
    tmp = tempfile.mkdtemp(prefix="altoflow-bench-")
    path = os.path.join(tmp, "fwd.sock")
    fwd = subprocess.Popen(child_cmd("--role", "forward", "--connect", path, "--loops", p["loop"]))
    echo = None
    try:
        await wait_path(path, fwd)
        echo = subprocess.Popen(child_cmd("--role", "echo", "--connect", path, "--loops", p["loop"]))
        transport, proto = await loop.create_unix_connection(ClientProto, path)
        transport.write(fr.encode_frame(fr.Kind.HELLO, stage=0, body=fr.Hello(stage="client", slot=0)))
        result = await measure_client(proto, p, [os.getpid(), fwd.pid, echo.pid], middle=1)
        result["cpu_processes"] = ["client", "forwarder", "echo"]
        transport.close()
        await stop(fwd)
        await stop(echo)
    finally:
        for proc in (fwd, echo):
            if proc is not None and proc.poll() is None:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


# -- the real router ---------------------------------------------------------------------------


class Served:
    """A Router in this process and one worker process per stage (one replica each)."""

    def __init__(self, pipeline: str, loop: str, max_inflight: int) -> None:
        self.target = f"{APP}:{pipeline}"
        self.loop = loop
        self.max_inflight = max_inflight

    async def __aenter__(self) -> "Served":
        from altoflow.compiler import load_target
        from altoflow.runtime.router import Router

        self.compiled = load_target(self.target).compiled
        self.router = Router(self.compiled, max_inflight=self.max_inflight, seed=0)
        self.tmp = tempfile.mkdtemp(prefix="altoflow-bench-")
        os.chmod(self.tmp, 0o700)
        path = os.path.join(self.tmp, "router.sock")
        await self.router.start(path)
        self.workers: dict[str, subprocess.Popen] = {}
        for stage in self.compiled.plan.stages:
            self.workers[stage.name] = subprocess.Popen(
                worker_cmd(self.target, stage.name, path, self.loop), start_new_session=True)
        want = {s.name: 1 for s in self.compiled.plan.stages}
        deadline = time.monotonic() + 60
        while self.router.ready() != want:
            for name, proc in self.workers.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {name} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("workers did not connect")
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.router.close()
        for proc in self.workers.values():
            await stop(proc)
        shutil.rmtree(self.tmp, ignore_errors=True)

    async def one(self, fields: dict) -> tuple[int, Any]:
        """Submit a request, read its events to the end: (outputs, the last event)."""
        outputs = 0
        last = None
        async for event in self.router.submit(fields):
            last = event
            if event.type == "output":
                outputs += 1
        return outputs, last

    async def requests(self, fields: dict, total: int, window: int) -> None:
        """`total` requests, `window` of them in flight at a time, each read to its end."""
        claim = itertools.count()

        async def client() -> None:
            while next(claim) < total:
                outputs, last = await self.one(fields)
                if last is None or last.type != "done" or outputs != 1:
                    raise RuntimeError(f"request ended with {last}")

        await asyncio.gather(*(client() for _ in range(window)))


async def router_trial(p: dict, pipeline: str) -> dict:
    served = Served(pipeline, p["loop"], max_inflight=max(p["req_window"], 1) + 16)
    async with served:
        fields = {"x": PAYLOAD} if pipeline == "one" else {"x": PAYLOAD, "n": 1}
        pids = [os.getpid(), *(proc.pid for proc in served.workers.values())]
        pin(pids, p)
        lat = []
        for i in range(p["latency_warm"] + p["latency_n"]):
            if i == p["latency_warm"]:
                before = [cpu_seconds(pid) for pid in pids]
            t0 = time.perf_counter_ns()
            outputs, last = await served.one(fields)
            t1 = time.perf_counter_ns()
            if last.type != "done" or outputs != 1:
                raise RuntimeError(f"request ended with {last}")
            if i >= p["latency_warm"]:
                lat.append((t1 - t0) / 1000)
        lat_cpu = [cpu_seconds(pid) - b for pid, b in zip(pids, before)]
        if pipeline == "one":
            await served.requests(fields, min(p["requests"], 5 * p["req_window"]), p["req_window"])
            items = p["requests"]
            run = lambda: served.requests(fields, items, p["req_window"])  # noqa: E731
        else:
            items = p["fanout"]
            await served.one({"x": PAYLOAD, "n": min(items, 10_000)})

            async def run() -> None:
                outputs = 0
                last = None
                start = time.perf_counter()
                router_sum = served.router.stats.latency.sum
                async for last in served.router.submit({"x": PAYLOAD, "n": items}):
                    if last.type == "output":
                        outputs += 1
                        if outputs == 1:
                            fanout_times["first_output_s"] = time.perf_counter() - start
                if last is None or last.type != "done" or outputs != items:
                    raise RuntimeError(f"fan-out ended with {last} after {outputs} outputs")
                # Admission to Finish as the router saw it; the rest is the client draining its
                # stream (a checkpoint every RequestStream.YIELD_EVERY events).
                fanout_times["router_finish_s"] = served.router.stats.latency.sum - router_sum
                fanout_times["client_done_s"] = time.perf_counter() - start

        fanout_times: dict[str, float] = {}
        gc.collect()
        profile = None
        if p.get("profile"):
            import cProfile

            profile = cProfile.Profile()
            profile.enable()
        before = [cpu_seconds(pid) for pid in pids]
        t0 = time.perf_counter()
        await run()
        elapsed = time.perf_counter() - t0
        cpu = [cpu_seconds(pid) - b for pid, b in zip(pids, before)]
        if profile is not None:
            profile.disable()
        result = {"latency_us": latency_record(lat, lat_cpu),
                  "items_per_s": items / elapsed, "items": items, "cpu_s": cpu,
                  "cpu_processes": ["router+client", *(f"worker:{n}" for n in served.workers)]}
        if fanout_times:
            result["fanout_times"] = fanout_times
        if profile is not None:
            result["profile"] = profile_rows(profile, items)
    return result


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


# -- memory ------------------------------------------------------------------------------------


def containers(obj: Any) -> dict[str, int]:
    out = {}
    for name, value in vars(obj).items():
        if isinstance(value, (dict, set, list, tuple, frozenset)) or type(value).__name__ == "deque":
            out[name] = len(value)
    return out


def router_state(router: Any) -> dict[str, dict[str, int]]:
    return {"router": containers(router), "core": containers(router.core),
            "progress": containers(router.core.progress),
            "replicas": {str(rid): len(rep.inflight) + len(rep.queue) + len(rep.groups)
                         for rid, rep in router.core.replicas.items()}}


def snapshot(label: str, t0: float, **extra: Any) -> dict:
    gc.collect()
    return {"label": label, "rss_bytes": rss_bytes(), "objects": len(gc.get_objects()),
            "t_s": round(time.perf_counter() - t0, 3), **extra}


def malloc_trim() -> bool:
    """glibc's malloc_trim(0): hand the heap's free memory back to the OS; False without glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = libc.malloc_trim if libc is not None else None
    except (OSError, AttributeError):
        return False
    if trim is None:
        return False
    trim(0)
    return True


async def memory_trial(p: dict) -> dict:
    t0 = time.perf_counter()
    points = []
    n = p["mem_inflight"]
    served = Served("held", p["loop"], max_inflight=max(n, p["req_window"]) + 16)
    async with served:
        router = served.router
        points.append(snapshot("started", t0))
        await served.one({"x": -1})  # open the gate
        await served.requests({"x": 1}, p["mem_warm"], p["req_window"])
        points.append(snapshot(f"after warm-up ({p['mem_warm']} requests)", t0))
        baseline = points[-1]
        await served.one({"x": -2})  # close it
        streams = [router.submit({"x": i}) for i in range(n)]
        deadline = time.monotonic() + 120
        while sum(len(r.inflight) for r in router.core.replicas.values()) < n:
            if time.monotonic() > deadline:
                raise TimeoutError("requests did not reach the replica")
            await asyncio.sleep(0.01)
        points.append(snapshot(f"{n} requests in flight", t0, in_flight=len(router.requests),
                               state=router_state(router)))
        inflight = points[-1]
        await served.one({"x": -1})
        while router.requests:
            await asyncio.sleep(0.01)
        for stream in streams:
            async for _event in stream:
                pass
        del streams, stream
        points.append(snapshot(f"after those {n} finished", t0, state=router_state(router)))
        after_inflight = points[-1]
        finished = 0
        started = time.perf_counter()
        trend = []
        while finished < p["mem_total"] and time.perf_counter() - started < p["mem_budget_s"]:
            step = min(p["mem_step"], p["mem_total"] - finished)
            await served.requests({"x": 1}, step, p["req_window"])
            finished += step
            trend.append(snapshot(f"{finished} finished", t0, finished=finished,
                                  requests_per_s=finished / (time.perf_counter() - started)))
        points.append(snapshot(f"after {finished} finished requests", t0, finished=finished,
                               state=router_state(router)))
        final = points[-1]
        # What of the RSS left over is live data and what is free memory that glibc keeps (the
        # malloc settings above tell it to keep freed memory rather than trim it): give the
        # free memory back and look again.
        trimmed = None
        if malloc_trim():
            points.append(snapshot("after malloc_trim(0)", t0))
            trimmed = points[-1]
        traced = None
        if p.get("tracemalloc"):
            traced = await traced_inflight(served, n)
    per_step = [b["rss_bytes"] - a["rss_bytes"] for a, b in zip(trend, trend[1:])]
    return {
        "points": points, "trend": trend, "finished": finished,
        "budget_s": p["mem_budget_s"], "target": p["mem_total"], "step": p["mem_step"],
        "inflight_bytes_per_request": (inflight["rss_bytes"] - baseline["rss_bytes"]) / n,
        "inflight_objects_per_request": (inflight["objects"] - baseline["objects"]) / n,
        "rss_delta_after_inflight_bytes": after_inflight["rss_bytes"] - baseline["rss_bytes"],
        "rss_delta_final_bytes": final["rss_bytes"] - baseline["rss_bytes"],
        "rss_delta_trimmed_bytes": None if trimmed is None else trimmed["rss_bytes"] - baseline["rss_bytes"],
        "objects_delta_after_inflight": after_inflight["objects"] - baseline["objects"],
        "objects_delta_final": final["objects"] - baseline["objects"],
        "rss_per_step_bytes": per_step,
        "tracemalloc_inflight": traced,
    }


async def traced_inflight(served: Served, n: int) -> dict:
    """Where the bytes of n in-flight requests are, by allocation site (tracemalloc)."""
    import tracemalloc

    router = served.router
    gc.collect()
    tracemalloc.start(3)
    before = tracemalloc.take_snapshot()
    await served.one({"x": -2})
    streams = [router.submit({"x": i}) for i in range(n)]
    while sum(len(r.inflight) for r in router.core.replicas.values()) < n:
        await asyncio.sleep(0.01)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    await served.one({"x": -1})
    for stream in streams:
        async for _event in stream:
            pass
    stats = after.compare_to(before, "traceback")
    total = sum(st.size_diff for st in stats)

    def site(tb: Any) -> str:
        # Innermost frame first; a dataclass's generated __init__ is "<string>": name its caller.
        names = []
        for frame in reversed(tb):  # a Traceback is ordered oldest first
            name = frame.filename
            if name.startswith(str(ROOT)):
                name = os.path.relpath(name, ROOT)
            elif "site-packages" in name:
                name = name.split("site-packages/", 1)[1]
            names.append(f"{name}:{frame.lineno}")
            if frame.filename != "<string>":
                break
        return " <- ".join(names)

    return {"bytes_per_request": total / n,
            "top": [{"site": site(st.traceback), "bytes_per_request": st.size_diff / n,
                     "count_per_request": st.count_diff / n} for st in stats[:12]]}


# -- where the router's CPU goes, without sockets -------------------------------------------


class FakeTransport:
    """Stands in for a replica's socket: keeps what the router writes."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def module_of(file: str) -> str:
    if file.startswith(str(ROOT)):
        return os.path.relpath(file, ROOT)
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1].split("/", 1)[0]
    if file == "~":
        return "builtins (C methods)"
    if file.startswith("<string>"):
        return "<string> (dataclass __init__)"
    return "stdlib:" + os.path.basename(file)


def by_module(profile: Any, items: int) -> list[dict]:
    import pstats

    totals: dict[str, float] = {}
    for (file, _line, _func), (_cc, _nc, tt, _ct, _callers) in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
        key = module_of(file)
        totals[key] = totals.get(key, 0.0) + tt
    whole = sum(totals.values())
    return [{"module": k, "share": v / whole, "us_per_item": v / items * 1e6}
            for k, v in sorted(totals.items(), key=lambda kv: -kv[1])]


async def breakdown_trial(p: dict) -> dict:
    """The router's own CPU per request (router-1) and per item (router-2), socket-free.

    Replicas are fake transports; their answers are encoded before the clock starts, so what
    is timed is only this process: admission and Invoke (submit), frames in through
    _Protocol.data_received (decode, core, instructions, frames out), and the client reading
    its events from its event channel. For scale, the same per-frame Python work of the direct
    endpoints and of the bare forwarder is timed the same way.
    """
    import cProfile

    from altoflow.compiler import load_target
    from altoflow import wire as fr
    from altoflow.wire import Codec
    from altoflow.runtime.router import Router, _Protocol

    n = p["breakdown_n"]
    fanout = p["breakdown_fanout"]
    batch = 1000
    payload = Codec().encode(PAYLOAD)
    DATA, ACK = fr.Kind.DATA, fr.Kind.ACK
    out: dict[str, Any] = {}

    def connect(router: Any, stage: str, index: int) -> tuple[Any, FakeTransport]:
        proto = _Protocol(router)
        transport = FakeTransport()
        proto.connection_made(transport)
        proto.data_received(fr.encode_frame(fr.Kind.HELLO, stage=index, body=fr.Hello(stage=stage, slot=0)))
        return proto, transport

    # -- router-1: one request = submit, DATA + ACK in, two events out
    async def one_pass(count: int, profile: Any = None) -> dict:
        router = Router(load_target(f"{APP}:one").compiled, max_inflight=16, seed=0)
        proto, transport = connect(router, "echo", 0)
        replies = {r: fr.encode_frame(DATA, stage=0, request_id=r, payload=payload)
                   + fr.encode_frame(ACK, stage=0, request_id=r) for r in range(1, count + 1)}
        phases = {"submit": 0, "frames_in": 0, "client_events": 0}
        fields = {"x": PAYLOAD}
        if profile is not None:
            profile.enable()
        for _ in range(count):
            t0 = time.perf_counter_ns()
            stream = router.submit(fields)
            t1 = time.perf_counter_ns()
            proto.data_received(replies[stream.request_id])
            t2 = time.perf_counter_ns()
            async for _event in stream:
                pass
            t3 = time.perf_counter_ns()
            phases["submit"] += t1 - t0
            phases["frames_in"] += t2 - t1
            phases["client_events"] += t3 - t2
        if profile is not None:
            profile.disable()
        transport.out.clear()
        return {k: v / count / 1000 for k, v in phases.items()}

    # -- router-2: one request, `fanout` items, each gen -> router -> relay -> router -> client
    async def two_pass(count: int, profile: Any = None) -> dict:
        router = Router(load_target(f"{APP}:two").compiled, max_inflight=16, seed=0)
        names = router.plan.names
        gen, _ = connect(router, "gen", names.index("gen"))
        relay, relay_transport = connect(router, "relay", names.index("relay"))
        gi, ri = names.index("gen"), names.index("relay")
        stream = router.submit({"x": PAYLOAD, "n": count})
        request = stream.request_id
        gen_batches = []
        relay_batches = []
        for first in range(0, count, batch):
            idx = range(first, min(first + batch, count))
            gen_batches.append(b"".join(fr.encode_frame(DATA, stage=gi, request_id=request, ancestry=(i,),
                                                        payload=payload) for i in idx))
            relay_batches.append(b"".join(
                fr.encode_frame(DATA, stage=ri, request_id=request, ancestry=(i,), payload=payload)
                + fr.encode_frame(ACK, stage=ri, request_id=request, ancestry=(i,)) for i in idx))
        phases = {"gen_frames_in": 0, "relay_frames_in": 0, "client_events": 0}
        if profile is not None:
            profile.enable()
        for gen_bytes, relay_bytes in zip(gen_batches, relay_batches):
            k = len(relay_bytes)
            t0 = time.perf_counter_ns()
            gen.data_received(gen_bytes)
            t1 = time.perf_counter_ns()
            relay.data_received(relay_bytes)
            t2 = time.perf_counter_ns()
            for _ in range(min(batch, count)):
                await stream.__anext__()
            t3 = time.perf_counter_ns()
            phases["gen_frames_in"] += t1 - t0
            phases["relay_frames_in"] += t2 - t1
            phases["client_events"] += t3 - t2
            del k
            relay_transport.out.clear()
        if profile is not None:
            profile.disable()
        gen.data_received(fr.encode_frame(ACK, stage=gi, request_id=request))
        last = [e async for e in stream]
        if not last or last[-1].type != "done":
            raise RuntimeError(f"fan-out did not finish: {last[-1:]}")
        return {k: v / count / 1000 for k, v in phases.items()}

    # -- the same per-frame Python work of the direct endpoints and of the bare forwarder
    def floors(count: int) -> dict:
        reader_c, reader_e, reader_f = fr.FrameReader(), fr.FrameReader(), fr.FrameReader()
        writer_e, writer_f = fr.FrameWriter(), fr.FrameWriter()
        t_direct = t_bare = 0
        for i in range(1, count + 1):
            t0 = time.perf_counter_ns()
            frame = fr.encode_frame(DATA, stage=1, request_id=i, ancestry=(1,), payload=PAYLOAD)
            for f in reader_e.feed(frame):
                writer_e.send_nowait(DATA, stage=0, request_id=f.request_id, ancestry=f.ancestry, payload=f.payload)
            answer = writer_e.flush()
            reader_c.feed(answer)
            t1 = time.perf_counter_ns()
            for data in (frame, answer):  # the forwarder sees both directions
                for _header, raw in reader_f.feed_raw(data):
                    writer_f.write_nowait(raw)
                writer_f.flush()
            t2 = time.perf_counter_ns()
            t_direct += t1 - t0
            t_bare += t2 - t1
        return {"direct_endpoints_us_per_round_trip": t_direct / count / 1000,
                "bare_forwarder_us_per_round_trip": t_bare / count / 1000}

    await one_pass(min(n, 500))
    await two_pass(min(fanout, 2 * batch))
    samples1, samples2, samples_f = [], [], []
    for _ in range(3):
        gc.collect()
        samples1.append(await one_pass(n))
        gc.collect()
        samples2.append(await two_pass(fanout))
        samples_f.append(floors(n))
    med = lambda rows: {k: statistics.median(r[k] for r in rows) for k in rows[0]}  # noqa: E731
    out["router1_us_per_request"] = med(samples1)
    out["router2_us_per_item"] = med(samples2)
    out["floors"] = med(samples_f)
    prof1 = cProfile.Profile()
    await one_pass(n, prof1)
    prof2 = cProfile.Profile()
    await two_pass(fanout, prof2)
    out["router1_modules"] = by_module(prof1, n)
    out["router2_modules"] = by_module(prof2, fanout)
    out["settings_items"] = {"router-1": n, "router-2": fanout}
    out["router1_functions"] = profile_rows(prof1, n, top=25)
    out["router2_functions"] = profile_rows(prof2, fanout, top=25)
    return out


# -- orchestration -----------------------------------------------------------------------------


def run_trial(kind: str, params: dict, timeout: float) -> dict:
    env = {**os.environ, **(MALLOC_ENV if params.get("malloc_env", True) else {})}
    proc = subprocess.run(child_cmd("--role", "trial", "--system", kind, "--params", json.dumps(params),
                                    "--loops", params["loop"]),
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"trial {kind} ({params['loop']}) failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def capacity(system: str, run: dict) -> float:
    """Frames the middle process handled per second of its own CPU time: what it would move
    with a core to itself, whatever the endpoints' speed (on 2 shared cores they set the pace)."""
    cpu = run["cpu_s"][MIDDLE_PROCESS[system]]
    return MIDDLE_FRAMES[system] * run["items"] / cpu if cpu > 0 else float("nan")


def analyse(trials: dict[str, list[dict]]) -> dict:
    """Per system: medians and min-max; ratios computed within each repetition, then summarised."""
    out: dict[str, Any] = {"systems": {}, "ratios": {}}
    for system, runs in trials.items():
        if not runs:
            continue
        items = [r["items_per_s"] for r in runs]
        row = {
            "p50_us": summary([r["latency_us"]["p50"] for r in runs]),
            "p99_us": summary([r["latency_us"]["p99"] for r in runs]),
            "items_per_s": summary(items),
            "middle_frames_per_s": summary([x * MIDDLE_FRAMES[system] for x in items]),
            "middle_frames_per_cpu_s": (summary([capacity(system, r) for r in runs])
                                        if system in MIDDLE_PROCESS else None),
            "cpu_us_per_item": {
                name: summary([r["cpu_s"][i] / r["items"] * 1e6 for r in runs])
                for i, name in enumerate(runs[0]["cpu_processes"])
            },
            "latency_cpu_us_per_item": {
                name: summary([r["latency_us"]["cpu_us_per_item"][i] for r in runs])
                for i, name in enumerate(runs[0]["cpu_processes"])
            },
        }
        if all("fanout_times" in r for r in runs):
            row["fanout_times"] = {k: summary([r["fanout_times"][k] for r in runs])
                                   for k in runs[0]["fanout_times"]}
        out["systems"][system] = row
    reps = min(len(r) for r in trials.values())

    def ratio(name: str, f: Any) -> None:
        try:
            values = [f(i) for i in range(reps)]
        except KeyError:
            return
        out["ratios"][name] = {**summary(values), "values": values}

    t = trials
    d = lambda s, i: t[s][i]["latency_us"]["p50"]  # noqa: E731
    q = lambda s, i: t[s][i]["items_per_s"]  # noqa: E731
    ratio("bare_added_p50_us", lambda i: d("bare", i) - d("direct", i))
    ratio("worker_added_p50_us", lambda i: d("worker", i) - d("direct", i))
    ratio("router1_minus_worker_p50_us", lambda i: d("router-1", i) - d("worker", i))
    ratio("router1_added_p50_us", lambda i: d("router-1", i) - d("direct", i))
    ratio("router1_added_over_direct_p50", lambda i: (d("router-1", i) - d("direct", i)) / d("direct", i))
    ratio("router1_p50_over_direct_p50", lambda i: d("router-1", i) / d("direct", i))
    ratio("router2_hop_added_p50_us", lambda i: d("router-2", i) - d("router-1", i))
    ratio("router2_hop_added_over_direct_p50", lambda i: (d("router-2", i) - d("router-1", i)) / d("direct", i))
    ratio("bare_frames_over_direct_items", lambda i: 2 * q("bare", i) / q("direct", i))
    ratio("router1_frames_over_bare_frames", lambda i: 3 * q("router-1", i) / (2 * q("bare", i)))
    ratio("router2_frames_over_bare_frames", lambda i: 4 * q("router-2", i) / (2 * q("bare", i)))
    c = lambda s, i: capacity(s, t[s][i])  # noqa: E731
    ratio("router1_frames_per_cpu_over_bare", lambda i: c("router-1", i) / c("bare", i))
    ratio("router2_frames_per_cpu_over_bare", lambda i: c("router-2", i) / c("bare", i))
    ratio("router1_items_over_bare_items", lambda i: q("router-1", i) / q("bare", i))
    ratio("router2_items_over_bare_items", lambda i: q("router-2", i) / q("bare", i))
    return out


def goals(analysis: dict, memory: dict | None) -> dict:
    """The issue's goals (`"from": "issue 3"`) and stricter views of our own (`"ours"`): one
    replica-to-replica hop, and frames per CPU-second, which leaves the endpoints' pace out."""
    r = analysis["ratios"]
    out = {}
    if "router1_added_over_direct_p50" in r:
        v = r["router1_added_over_direct_p50"]["median"]
        out["hop_p50"] = {"goal": "router-1 p50 minus direct p50 <= 1.5x direct p50", "value": v,
                          "met": v <= 1.5, "from": "issue 3"}
    if "router2_hop_added_over_direct_p50" in r:
        v = r["router2_hop_added_over_direct_p50"]["median"]
        out["replica_hop_p50"] = {"goal": "router-2 p50 minus router-1 p50 (one replica->router->replica "
                                          "hop) <= 1.5x direct p50", "value": v, "met": v <= 1.5,
                                  "from": "ours"}
    for k, what in (("router1_frames_over_bare_frames", "router-1 frames/s through the middle"),
                    ("router2_frames_over_bare_frames", "router-2 frames/s through the middle"),
                    ("router1_frames_per_cpu_over_bare", "router-1 frames per CPU-second of the middle"),
                    ("router2_frames_per_cpu_over_bare", "router-2 frames per CPU-second of the middle")):
        if k in r:
            v = r[k]["median"]
            out[k] = {"goal": f"{what} >= 0.25x the bare forwarder's", "value": v, "met": v >= 0.25,
                      "from": "ours" if "per_cpu" in k else "issue 3"}
    if memory is not None:
        base = next(p for p in memory["points"] if p["label"].startswith("after warm-up"))
        rel = memory["rss_delta_final_bytes"] / base["rss_bytes"]
        trend = memory["trend"]
        drift = trend[-1]["rss_bytes"] - trend[0]["rss_bytes"] if len(trend) > 1 else 0
        trimmed = memory.get("rss_delta_trimmed_bytes")
        met = drift <= 2 << 20 and abs(memory["objects_delta_final"]) <= 2000
        out["memory"] = {"goal": "no leak: live objects back to the warm baseline (within 2000) and RSS "
                                 "flat over the finished requests (last trend point minus first <= 2 MiB); "
                                 "the RSS left over from the 10k peak is reported, before and after "
                                 "malloc_trim(0)",
                         "rss_delta_final_bytes": memory["rss_delta_final_bytes"], "rss_delta_final_rel": rel,
                         "rss_delta_trimmed_bytes": trimmed,
                         "rss_drift_over_trend_bytes": drift,
                         "objects_delta_final": memory["objects_delta_final"],
                         "finished": memory["finished"], "met": met, "from": "issue 3"}
    return out


def fmt_range(s: dict, spec: str = ",.0f") -> str:
    return f"{s['median']:{spec}} [{s['min']:{spec}}-{s['max']:{spec}}]"


def tables(result: dict, md: bool) -> str:
    lines = []
    sep = " | " if md else "  "

    def row(cells: list[str]) -> None:
        lines.append(("| " + " | ".join(cells) + " |") if md else sep.join(cells))

    def head(cells: list[str]) -> None:
        row(cells)
        if md:
            lines.append("|" + "|".join(" --- " for _ in cells) + "|")

    for loop, data in result["loops"].items():
        lines.append(f"{'### ' if md else ''}event loop: {loop}  (median [min-max] over {result['repeat']} repetitions)")
        lines.append("")
        head(["system", "p50 us", "p99 us", "CPU us/request at p50 load", "items/s",
              "frames/s through the middle", "middle: frames per CPU-s", "CPU us/item under load"])
        for system, s in data["analysis"]["systems"].items():
            cpu = ", ".join(f"{name} {v['median']:.1f}" for name, v in s["cpu_us_per_item"].items())
            middle = fmt_range(s["middle_frames_per_s"]) if MIDDLE_FRAMES[system] else "-"
            cap = fmt_range(s["middle_frames_per_cpu_s"]) if s.get("middle_frames_per_cpu_s") else "-"
            lcpu = ", ".join(f"{name} {v['median']:.0f}" for name, v in s["latency_cpu_us_per_item"].items())
            row([system, fmt_range(s["p50_us"], ".1f"), fmt_range(s["p99_us"], ".1f"), lcpu,
                 fmt_range(s["items_per_s"]), middle, cap, cpu])
        lines.append("")
        for system, s in data["analysis"]["systems"].items():
            ft = s.get("fanout_times")
            if ft:
                lines.append(
                    f"{system} fan-out of {result['settings']['fanout']:,}: first output reached the client "
                    f"after {fmt_range(ft['first_output_s'], '.2f')} s; the router finished the request "
                    f"(admission to Finish) after {fmt_range(ft['router_finish_s'], '.2f')} s; the client had "
                    f"read every event after {fmt_range(ft['client_done_s'], '.2f')} s.")
                lines.append("")
        head(["ratio (within each repetition)", "median [min-max]"])
        for name, v in data["analysis"]["ratios"].items():
            row([name, fmt_range(v, ".2f")])
        lines.append("")
        head(["goal", "from", "value", "met"])
        for name, g in data["goals"].items():
            if name == "memory":
                value = (f"objects {g['objects_delta_final']:+d}; RSS drift over the trend "
                         f"{g['rss_drift_over_trend_bytes'] / 2**20:+.1f} MiB; RSS vs the warm baseline "
                         f"{g['rss_delta_final_bytes'] / 2**20:+.1f} MiB ({g['rss_delta_final_rel']:+.1%}) "
                         f"after {g['finished']:,} requests")
                if g.get("rss_delta_trimmed_bytes") is not None:
                    value += f", {g['rss_delta_trimmed_bytes'] / 2**20:+.1f} MiB after malloc_trim(0)"
            else:
                value = f"{g['value']:.2f}"
            row([g["goal"], g.get("from", "issue 3"), value, "yes" if g["met"] else "**no**" if md else "NO"])
        lines.append("")
        mem = data.get("memory")
        if mem:
            head(["router process", "RSS MiB", "live objects", "note"])
            for p in mem["points"]:
                note = f"{p['in_flight']:,} in flight" if "in_flight" in p else ""
                row([p["label"], f"{p['rss_bytes'] / 2**20:.1f}", f"{p['objects']:,}", note])
            lines.append("")
            head(["finished requests", "RSS MiB", "live objects", "requests/s so far"])
            for p in mem["trend"]:
                row([f"{p['finished']:,}", f"{p['rss_bytes'] / 2**20:.1f}", f"{p['objects']:,}",
                     f"{p['requests_per_s']:,.0f}"])
            lines.append("")
            lines.append(f"{mem['finished']:,} of the {mem['target']:,} requests asked for finished within the "
                         f"{mem['budget_s']:.0f} s budget; in flight, each request costs "
                         f"{mem['inflight_bytes_per_request']:,.0f} B of RSS and "
                         f"{mem['inflight_objects_per_request']:.1f} live objects in the router process.")
            if mem.get("tracemalloc_inflight"):
                tm = mem["tracemalloc_inflight"]
                lines.append("")
                head([f"tracemalloc, {tm['bytes_per_request']:,.0f} B per in-flight request: site", "B/request",
                      "blocks/request"])
                for s in tm["top"]:
                    row([f"`{s['site']}`" if md else s["site"], f"{s['bytes_per_request']:,.0f}",
                         f"{s['count_per_request']:.2f}"])
            lines.append("")
    bd = result.get("breakdown")
    if bd:
        lines.append(f"{'### ' if md else ''}Where the router's CPU goes, without sockets ({bd['loop']}; "
                     "median of 3 passes; fake replica transports, answers encoded before the clock)")
        lines.append("")
        head(["path", "phase", "us"])
        f = bd["floors"]
        row(["direct endpoints", "encode + decode + re-encode + decode, per round trip",
             f"{f['direct_endpoints_us_per_round_trip']:.1f}"])
        row(["bare forwarder", "feed_raw + write_nowait + flush, both directions, per round trip",
             f"{f['bare_forwarder_us_per_round_trip']:.1f}"])
        r1 = bd["router1_us_per_request"]
        for k, v in r1.items():
            row(["router-1, per request", k, f"{v:.1f}"])
        row(["router-1, per request", "**total**" if md else "TOTAL", f"{sum(r1.values()):.1f}"])
        r2 = bd["router2_us_per_item"]
        for k, v in r2.items():
            row(["router-2, per item", k, f"{v:.1f}"])
        row(["router-2, per item", "**total**" if md else "TOTAL", f"{sum(r2.values()):.1f}"])
        lines.append("")
        for key, label in (("router1_modules", "router-1"), ("router2_modules", "router-2")):
            head([f"{label}: own time by module (cProfile)", "share", "us/item (profiled)"])
            for m in bd[key][:12]:
                name = f"`{m['module']}`" if md else m["module"]
                row([name, f"{m['share']:.0%}", f"{m['us_per_item']:.1f}"])
            lines.append("")
        for key, label in (("router1_functions", "router-1"), ("router2_functions", "router-2")):
            head([f"{label}: functions by own time (cProfile)", "calls/item", "own us/item", "cumulative us/item"])
            for r in bd[key][:15]:
                fn = f"`{r['function']}`" if md else r["function"]
                items = bd["settings_items"][label] if "settings_items" in bd else None
                row([fn, f"{r['calls'] / items:.2f}" if items else str(r["calls"]),
                     f"{r['tottime_us_per_item']:.2f}", f"{r['cumtime_us_per_item']:.2f}"])
            lines.append("")
    prof = result.get("profile")
    if prof:
        for key, rows in prof.items():
            lines.append(f"{'### ' if md else ''}cProfile of the router process, {key} (top by own time; "
                         "cProfile inflates call-heavy code)")
            lines.append("")
            head(["function", "calls/item", "own us/item", "cumulative us/item"])
            for r in rows[:20]:
                fn = f"`{r['function']}`" if md else r["function"]
                row([fn, f"{r['calls'] / r['items']:.2f}" if "items" in r else str(r["calls"]),
                     f"{r['tottime_us_per_item']:.2f}", f"{r['cumtime_us_per_item']:.2f}"])
            lines.append("")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    m = result["machine"]
    return "\n".join([
        "# Router benchmark: the runtime's own cost",
        "",
        "Generated by `python benchmarks/router.py --markdown` from `benchmarks/results/router.json`;",
        "do not edit by hand. See benchmarks.md section 2 and the docstring of `benchmarks/router.py`.",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}",
        f"- machine: {m['platform']}, {m['cpus']} CPUs ({m['processor']}), Python {m['python']}, "
        f"protobuf {m['protobuf']}, uvloop {m['uvloop']}",
        f"- settings: {json.dumps(result['settings'])}",
        "",
        "What each system is:",
        "",
        *[f"- **{k}**: {v}" for k, v in WHAT.items()],
        "",
        "Latency is one frame or request in flight; items/s has many in flight. frames/s through the "
        "middle counts the frames the middle process reads or writes per item (bare 2; router-1 3: DATA "
        "out, DATA and ACK in; router-2 4); frames per CPU-s divides them by the middle process's own "
        "CPU time, what it would move with a core to itself (on 2 shared cores the endpoints, which "
        "encode and decode every frame in Python, set the end-to-end pace). CPU columns are user+system "
        "time of each process from /proc (10 ms ticks), during the latency phase (per request, one in "
        "flight) and during the throughput phase (per item). The router's process includes the client "
        "coroutines that submit requests and read their events.",
        "",
        tables(result, md=True),
    ]) + "\n"


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
        raise SystemExit("--repeat must be at least 3 (benchmarks.md: medians over >= 3 repetitions)")
    if args.loops == "both":
        loops = ["uvloop", "asyncio"] if have_uvloop() else ["asyncio"]
    elif args.loops == "auto":
        loops = ["uvloop" if have_uvloop() else "asyncio"]
    else:
        loops = [args.loops]
    systems = [s for s in SYSTEMS if s in args.systems.split(",")]
    timeout = 120 if args.quick else 600
    trials: dict[str, dict[str, list[dict]]] = {loop: {s: [] for s in systems} for loop in loops}
    for rep in range(repeat):
        for loop in loops:
            for system in systems:
                t = time.perf_counter()
                res = run_trial(system, {**setting, "loop": loop}, timeout)
                trials[loop][system].append(res)
                print(f"rep {rep + 1}/{repeat} {loop:7} {system:8}  p50 {res['latency_us']['p50']:8.1f} us  "
                      f"p99 {res['latency_us']['p99']:8.1f} us  {res['items_per_s']:>10,.0f} items/s  "
                      f"({time.perf_counter() - t:.1f} s)", flush=True)
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
