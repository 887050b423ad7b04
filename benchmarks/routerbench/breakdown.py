"""Where the router's CPU goes, without sockets: its phases timed in-process, with fake replica
transports, next to the same per-frame work of the direct endpoints and the bare forwarder."""

from __future__ import annotations

import gc
import os
import time
from typing import Any

from _stats import medians

from .common import APP, PAYLOAD, ROOT, profile_rows


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
    out["router1_us_per_request"] = medians(samples1)
    out["router2_us_per_item"] = medians(samples2)
    out["floors"] = medians(samples_f)
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
