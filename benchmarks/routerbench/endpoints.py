"""The systems without altoflow's router: ``direct`` and ``worker`` (a client and one peer over
one socket) and ``bare`` (a minimal forwarder between them), and the client that drives them."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

from .common import APP, PAYLOAD, child_cmd, cpu_seconds, latency_record, pin, stop, wait_path, worker_cmd


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
