"""The router process's shell: replica sockets in, ``RouterCore`` decisions, frames out.

It owns no routing logic (that is ``core.RouterCore``); it turns frames into core events and
core instructions into frames, and hands each request's events to whoever submitted it. Writes
to each replica are coalesced into one buffer per event-loop turn (perf-notes.md: batching is
worth a factor of ten).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import time

from altoflow._result import Event, done_event, output_event
from altoflow.server.ingress import (
    EventChannel, Histogram, MetricFamily, Overloaded, RequestStream, render_metrics,
)
from altoflow.compiler import CompiledPipeline
from altoflow import wire as fr
from altoflow.wire import Codec
from altoflow.runtime.core import (
    Abort, Cancel, Emit, ErrorInfo, Finish, Flush, FlushDone, Invoke, Open,
    ReplicaDown, ReplicaUp, RouterCore, Submit,
)

_DATA, _ACK, _FLUSH_DONE, _HEARTBEAT = fr.Kind.DATA, fr.Kind.ACK, fr.Kind.FLUSH_DONE, fr.Kind.HEARTBEAT


def _output_hint(spec: Any) -> Any:
    """The type to decode a stage's outputs with for the client: a map stage's return
    annotation tells pydantic and protobuf payloads what they are; a generator's or an
    aggregate's does not describe its items."""
    hint = spec.return_annotation
    if hint is inspect.Signature.empty or spec.is_generator or spec.aggregate is not None:
        return None
    return hint


@dataclass
class _Conn:
    """One replica's socket."""

    router: "Router"
    transport: Any = None
    rid: int | None = None
    stage: str | None = None
    challenge: bytes | None = None  # TCP: the nonce this replica must prove the secret over
    reader: fr.FrameReader = field(default_factory=fr.FrameReader)
    writer: fr.FrameWriter = field(default_factory=fr.FrameWriter)


class _Protocol(asyncio.Protocol):
    def __init__(self, router: "Router", tcp: bool = False) -> None:
        self.conn = _Conn(router)
        self.tcp = tcp

    def connection_made(self, transport: Any) -> None:
        self.conn.transport = transport
        if self.tcp:
            # Over TCP the replica must prove it knows the shared secret before anything else.
            self.conn.challenge = os.urandom(fr.NONCE_SIZE)
            transport.write(fr.encode_frame(fr.Kind.CHALLENGE, body=fr.Challenge(self.conn.challenge)))

    def data_received(self, data: bytes) -> None:
        router = self.conn.router
        try:
            for frame in self.conn.reader.feed(data):
                router._on_frame(self.conn, frame)
        except fr.ProtocolError as exc:
            # The peer's mistake: drop that replica, keep serving everyone else.
            print(f"altoflow router: replica {self.conn.stage}#{self.conn.rid}: {exc}", file=sys.stderr)
            self.conn.transport.close()
        router._flush_soon()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.router._on_lost(self.conn)


class _Stats:
    def __init__(self, stages: list[str]) -> None:
        self.admitted = 0
        self.rejected = 0
        self.outcomes: dict[str, int] = {"done": 0, "error": 0, "cancelled": 0}
        self.items = {name: 0 for name in stages}
        self.errors = {name: 0 for name in stages}
        self.latency = Histogram()
        self.stage_latency = {name: Histogram() for name in stages}


class Router:
    def __init__(self, compiled: CompiledPipeline, *, codec: Codec | None = None,
                 max_inflight: int = 1024, seed: int | None = None) -> None:
        self.compiled = compiled
        self.plan = compiled.plan
        self.core = RouterCore(self.plan, seed=seed)
        self.codec = codec or Codec()
        self.max_inflight = max_inflight
        self.stage_index = {name: i for i, name in enumerate(self.plan.names)}
        self.conns: dict[int, _Conn] = {}
        self.requests: dict[int, EventChannel] = {}  # request id -> its events' buffer
        self._ids = itertools.count(1)
        self._rids = itertools.count(1)
        self._dirty: set[int] = set()
        self._flush_scheduled = False
        self.stats = _Stats(self.plan.names)
        self._started: dict[tuple[int, tuple], float] = {}  # (replica, ancestry) -> dispatch time
        self._admitted: dict[int, float] = {}
        self.server: asyncio.AbstractServer | None = None
        self._output_hints = {name: _output_hint(compiled.specs[name]) for name in self.plan.names}

    async def start(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_unix_server(lambda: _Protocol(self), path)

    async def listen_tcp(self, host: str, port: int, secret: bytes) -> int:
        """Accept replicas from other machines on host:port; returns the port (0 picks one)."""
        if not secret:
            raise ValueError("TCP replicas need a shared secret (--secret-file or ALTOFLOW_SECRET)")
        self.secret = secret
        loop = asyncio.get_running_loop()
        self.tcp_server = await loop.create_server(lambda: _Protocol(self, tcp=True), host, port)
        return self.tcp_server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for conn in list(self.conns.values()):
            conn.writer.send_nowait(fr.Kind.SHUTDOWN)
            conn.transport.write(conn.writer.flush())
            conn.transport.close()
        for server in (self.server, getattr(self, "tcp_server", None)):
            if server is not None:
                server.close()
                await server.wait_closed()

    # -- requests -------------------------------------------------------------------------

    def submit(self, fields: dict[str, Any]) -> RequestStream:
        """Start a request; its events (outputs, then done or error) come from the stream.

        Raises ``InputError`` for fields that do not fit the request schema, and ``Overloaded``
        when ``max_inflight`` requests are in flight. Closing the stream cancels the request.
        """
        values = self.compiled.validate_request(fields)
        if len(self.requests) >= self.max_inflight:
            self.stats.rejected += 1
            raise Overloaded(f"the server is busy: {len(self.requests)} requests in flight, the most it "
                             f"takes (--max-inflight {self.max_inflight}); retry in 1 s")
        encoded = {name: self.codec.encode(v) for name, v in values.items()}
        request = next(self._ids)
        channel = EventChannel()
        self.requests[request] = channel
        self._admitted[request] = time.perf_counter()
        self.stats.admitted += 1
        self._apply(self.core.handle(Submit(request, encoded)))
        self._flush_soon()
        return RequestStream(channel, lambda: self._cancel(request), request)

    def _cancel(self, request: int) -> None:
        channel = self.requests.pop(request, None)
        if channel is None:
            return  # it had finished
        channel.close()
        self._finished(request, "cancelled")
        self._apply(self.core.handle(Cancel(request)))
        self._schedule_flush()

    def _finished(self, request: int, outcome: str) -> None:
        started = self._admitted.pop(request, None)
        self.stats.outcomes[outcome] = self.stats.outcomes.get(outcome, 0) + 1
        if started is not None and outcome != "cancelled":
            self.stats.latency.observe(time.perf_counter() - started)

    def live_slots(self) -> set[tuple[str, int]]:
        """(stage, slot) of every connected replica."""
        return {(rep.stage, rep.slot) for rep in self.core.replicas.values() if rep.state == "ready"}

    def ready(self) -> dict[str, int]:
        """Live replicas per stage."""
        live = {s.name: 0 for s in self.plan.stages}
        for conn in self.conns.values():
            if conn.stage is not None:
                live[conn.stage] += 1
        return live

    # -- frames in ------------------------------------------------------------------------

    def _on_frame(self, conn: _Conn, frame: fr.Frame) -> None:
        # The per-frame path: kinds compared by identity (the reader hands out the Kind
        # members themselves), and an ACK's error looked at only when it has one.
        stage = conn.stage
        if stage is None:
            self._on_hello(conn, frame)
            return
        kind = frame.kind
        anc = (frame.request_id, *frame.ancestry)
        if kind is _DATA:
            self.stats.items[stage] += 1
            self._apply(self.core.output(conn.rid, stage, anc, frame.payload))  # type: ignore[arg-type]
        elif kind is _ACK:
            started = self._started.pop((conn.rid, anc), None)
            if started is not None:
                self.stats.stage_latency[stage].observe(time.perf_counter() - started)
            error = None
            if frame.status == 2:
                self.stats.errors[stage] += 1
                error = self._error(stage, self.core.stages[stage].levels_in, anc, frame.body)
            self._apply(self.core.ack(conn.rid, stage, anc, fr.STATUS_NAMES[frame.status], error))  # type: ignore[arg-type]
        elif kind is _FLUSH_DONE:
            error = self._error(stage, self.core.stages[stage].route_key or [], anc, frame.body)
            self._apply(self.core.handle(FlushDone(conn.rid, stage, anc, fr.STATUS_NAMES[frame.status], error)))  # type: ignore[arg-type]
        elif kind is not _HEARTBEAT:
            raise fr.RemoteProtocolError(f"the router does not take {kind.name} frames from replicas")

    def _on_hello(self, conn: _Conn, frame: fr.Frame) -> None:
        hello = frame.body
        if frame.kind != fr.Kind.HELLO or not isinstance(hello, fr.Hello):
            raise fr.RemoteProtocolError(f"expected HELLO first, got {frame.kind.name}")
        if hello.stage not in self.stage_index:
            raise fr.RemoteProtocolError(f"HELLO for unknown stage {hello.stage!r}")
        if not 0 <= hello.slot < self.core.stages[hello.stage].replicas:
            raise fr.RemoteProtocolError(
                f"HELLO for slot {hello.slot} of {hello.stage}, which has "
                f"{self.core.stages[hello.stage].replicas} replicas")
        if hello.slot in self.core.slots[hello.stage]:
            # Two replicas on one slot would split an aggregate's groups between them.
            raise fr.RemoteProtocolError(
                f"slot {hello.slot} of {hello.stage} is connected already; start each "
                f"`altoflow worker --slot N` once")
        proof = b""
        if conn.challenge is not None:
            fr.verify_proof(fr.replica_proof(self.secret, conn.challenge, hello), hello.proof,
                            peer=f"replica {hello.stage}#{hello.slot}")
            proof = fr.router_proof(self.secret, conn.challenge, hello)
        conn.rid, conn.stage = next(self._rids), hello.stage
        self.conns[conn.rid] = conn
        conn.writer.send_nowait(fr.Kind.READY, body=fr.Ready(self.stage_index[hello.stage], proof))
        self._dirty.add(conn.rid)
        self._apply(self.core.handle(ReplicaUp(conn.rid, hello.stage, hello.slot)))

    def _on_lost(self, conn: _Conn) -> None:
        if conn.rid is None or conn.rid not in self.conns:
            return
        del self.conns[conn.rid]
        self._apply(self.core.handle(ReplicaDown(conn.rid)))
        self._schedule_flush()

    def _error(self, stage: str, levels: list[str], anc: tuple, body: Any) -> ErrorInfo | None:
        if not isinstance(body, fr.ErrorBody):
            return None
        return ErrorInfo(stage, dict(zip(levels, anc[1:])), body.message, body.exc_type or None)

    # -- instructions out -----------------------------------------------------------------

    def _apply(self, instructions: list[Any]) -> None:
        for ins in instructions:
            t = type(ins)
            if t is Invoke:
                self._started[(ins.replica, ins.ancestry)] = time.perf_counter()
                stage = self.core.stages[ins.stage]
                anc = ins.ancestry
                if len(stage.params) == 1:
                    frame = fr.encode_item(_DATA, self.stage_index[ins.stage], anc[0], anc[1:],
                                           ins.args[stage.params[0]])
                else:
                    parts = [ins.args[p] for p in stage.params]
                    frame = fr.encode_item(_DATA, self.stage_index[ins.stage], anc[0], anc[1:],
                                           b"".join(parts), part_sizes=[len(p) for p in parts])
                self._write(ins.replica, frame)
            elif t is Emit:
                channel = self.requests.get(ins.request)
                if channel is not None:
                    value = self.codec.decode(ins.payload, self._output_hints[ins.stage])
                    channel.send_nowait(output_event(ins.stage, ins.ancestry, value))
            elif t is Finish:
                channel = self.requests.pop(ins.request, None)
                if channel is None:
                    continue
                if ins.error is None:
                    channel.send_nowait(done_event())
                    self._finished(ins.request, "done")
                else:
                    e = ins.error
                    channel.send_nowait(Event("error", e.stage, e.ancestry, error=e.detail,
                                              exc_type=e.exc_type))
                    self._finished(ins.request, "error")
                channel.end()
            elif t is Open:
                self._write(ins.replica, fr.encode_item(fr.Kind.OPEN, self.stage_index[ins.stage],
                                                        ins.prefix[0], ins.prefix[1:]))
            elif t is Flush:
                self._write(ins.replica, fr.encode_item(fr.Kind.FLUSH, self.stage_index[ins.stage],
                                                        ins.prefix[0], ins.prefix[1:],
                                                        opened=ins.opened))
            elif t is Abort:
                self._write(ins.replica, fr.encode_item(fr.Kind.CANCEL, 0, ins.request))
            else:
                raise TypeError(f"unknown instruction {ins!r}")

    def metrics(self) -> str:
        """Prometheus text: requests, and per stage queue depth, in-flight, items, errors, latency."""
        core, st = self.core, self.stats
        queued = {name: len(q) for name, q in core.stage_queue.items()}
        inflight = {name: 0 for name in self.plan.names}
        for rep in core.replicas.values():
            queued[rep.stage] += len(rep.queue)
            inflight[rep.stage] += len(rep.inflight)
        for (name, _slot), q in core.parked.items():
            queued[name] += len(q)
        per = lambda values: [("", {"stage": n}, v) for n, v in values.items()]  # noqa: E731
        latency = [s for n in self.plan.names for s in st.stage_latency[n].samples({"stage": n})]
        return render_metrics([
            MetricFamily("altoflow_requests_in_flight", "gauge", "Requests admitted and not finished.",
                         [("", {}, len(self.requests))]),
            MetricFamily("altoflow_requests_total", "counter", "Requests admitted.", [("", {}, st.admitted)]),
            MetricFamily("altoflow_requests_finished_total", "counter", "Requests that ended, by outcome.",
                         [("", {"outcome": o}, n) for o, n in sorted(st.outcomes.items())]),
            MetricFamily("altoflow_requests_rejected_total", "counter",
                         "Requests answered 503 (max_inflight reached).", [("", {}, st.rejected)]),
            MetricFamily("altoflow_request_duration_seconds", "histogram",
                         "Admission to the done or error event.", st.latency.samples()),
            MetricFamily("altoflow_stage_queue_depth", "gauge",
                         "Invocations waiting in the router for a replica credit.", per(queued)),
            MetricFamily("altoflow_stage_in_flight", "gauge", "Invocations running on replicas.",
                         per(inflight)),
            MetricFamily("altoflow_stage_output_items_total", "counter", "Items the stage produced.",
                         per(st.items)),
            MetricFamily("altoflow_stage_errors_total", "counter",
                         "Invocations that failed under on_error='fail'.", per(st.errors)),
            MetricFamily("altoflow_stage_invocation_seconds", "histogram",
                         "Dispatch to acknowledgement of one invocation.", latency),
            MetricFamily("altoflow_replicas_live", "gauge", "Connected replicas per stage.",
                         per(self.ready())),
        ])

    def _write(self, rid: int, frame: bytes) -> None:
        conn = self.conns.get(rid)
        if conn is None:
            return  # it died; the core has been told (ReplicaDown) and re-routes
        conn.writer.write_nowait(frame)
        self._dirty.add(rid)

    def _flush_soon(self) -> None:
        # With at most one request in flight, nothing else could join these writes, so they go
        # now rather than a loop turn later (the worker does the same for a lone invocation).
        if len(self.requests) <= 1:
            self._flush_all()
        else:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        # One write per replica per event-loop turn, however many frames the turn produced
        # (perf-notes.md: batching is worth a factor of ten).
        if self._dirty and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_all)

    def _flush_all(self) -> None:
        self._flush_scheduled = False
        for rid in self._dirty:
            conn = self.conns.get(rid)
            if conn is not None and not conn.transport.is_closing():
                data = conn.writer.flush()
                if data:
                    conn.transport.write(data)
        self._dirty.clear()
