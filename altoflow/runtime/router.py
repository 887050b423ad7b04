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
import sys
from dataclasses import dataclass, field
from typing import Any

from altoflow._result import Event
from altoflow.compiler import CompiledPipeline
from altoflow.runtime import frames as fr
from altoflow.runtime.codec import Codec
from altoflow.runtime.core import (
    Abort, Ack, Cancel, Emit, ErrorInfo, Finish, Flush, FlushDone, Invoke, Open, Output,
    ReplicaDown, ReplicaUp, RouterCore, Submit,
)

STATUS = {0: "ok", 1: "dropped", 2: "failed"}


class Overloaded(Exception):
    """The router holds as many requests as it may; try again later (HTTP 503)."""


@dataclass
class _Conn:
    """One replica's socket."""

    router: "Router"
    transport: Any = None
    rid: int | None = None
    stage: str | None = None
    reader: fr.FrameReader = field(default_factory=fr.FrameReader)
    writer: fr.FrameWriter = field(default_factory=fr.FrameWriter)


class _Protocol(asyncio.Protocol):
    def __init__(self, router: "Router") -> None:
        self.conn = _Conn(router)

    def connection_made(self, transport: Any) -> None:
        self.conn.transport = transport

    def data_received(self, data: bytes) -> None:
        router = self.conn.router
        try:
            for frame in self.conn.reader.feed(data):
                router._on_frame(self.conn, frame)
        except fr.ProtocolError as exc:
            # The peer's mistake: drop that replica, keep serving everyone else.
            print(f"altoflow router: replica {self.conn.stage}#{self.conn.rid}: {exc}", file=sys.stderr)
            self.conn.transport.close()
        router._flush_all()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.router._on_lost(self.conn)


class RequestHandle:
    """The events of one request, as an async iterator; ``aclose()`` cancels the request."""

    def __init__(self, router: "Router", request: int) -> None:
        self.router = router
        self.request = request
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.finished = False

    def __aiter__(self) -> "RequestHandle":
        return self

    async def __anext__(self) -> Event:
        if self.finished and self.queue.empty():
            raise StopAsyncIteration
        event = await self.queue.get()
        if event.type != "output":
            self.finished = True
        return event

    async def aclose(self) -> None:
        if not self.finished:
            self.finished = True
            self.router._cancel(self.request)


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
        self.requests: dict[int, RequestHandle] = {}
        self._ids = itertools.count(1)
        self._rids = itertools.count(1)
        self._dirty: set[int] = set()
        self.stats = {"requests_total": 0, "requests_failed": 0, "requests_rejected": 0}
        self.server: asyncio.AbstractServer | None = None

    async def start(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_unix_server(lambda: _Protocol(self), path)

    async def close(self) -> None:
        for conn in list(self.conns.values()):
            conn.writer.send_nowait(fr.Kind.SHUTDOWN)
            conn.transport.write(conn.writer.flush())
            conn.transport.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    # -- requests -------------------------------------------------------------------------

    def submit(self, fields: dict[str, Any]) -> RequestHandle:
        """Start a request with validated fields; its events come from the returned handle."""
        if len(self.requests) >= self.max_inflight:
            self.stats["requests_rejected"] += 1
            raise Overloaded(f"{len(self.requests)} requests in flight (max_inflight={self.max_inflight})")
        values = self.compiled.validate_request(fields)
        request = next(self._ids)
        handle = self.requests[request] = RequestHandle(self, request)
        self.stats["requests_total"] += 1
        encoded = {name: self.codec.encode(v) for name, v in values.items()}
        self._apply(self.core.handle(Submit(request, encoded)))
        self._flush_all()
        return handle

    def _cancel(self, request: int) -> None:
        self.requests.pop(request, None)
        self._apply(self.core.handle(Cancel(request)))
        self._flush_all()

    def ready(self) -> dict[str, int]:
        """Live replicas per stage."""
        live = {s.name: 0 for s in self.plan.stages}
        for conn in self.conns.values():
            if conn.stage is not None:
                live[conn.stage] += 1
        return live

    # -- frames in ------------------------------------------------------------------------

    def _on_frame(self, conn: _Conn, frame: fr.Frame) -> None:
        if conn.rid is None:
            self._on_hello(conn, frame)
            return
        stage = conn.stage
        assert stage is not None
        anc = (frame.request_id, *frame.ancestry)
        kind = frame.kind
        if kind == fr.Kind.DATA:
            event: Any = Output(conn.rid, stage, anc, frame.payload)
        elif kind == fr.Kind.ACK:
            event = Ack(conn.rid, stage, anc, STATUS[frame.status],
                        self._error(stage, self.plan.stage(stage).levels_in, anc, frame.body))
        elif kind == fr.Kind.FLUSH_DONE:
            event = FlushDone(conn.rid, stage, anc, STATUS[frame.status],
                              self._error(stage, self.plan.stage(stage).route_key or [], anc, frame.body))
        elif kind == fr.Kind.HEARTBEAT:
            return
        else:
            raise fr.RemoteProtocolError(f"the router does not take {kind.name} frames from replicas")
        self._apply(self.core.handle(event))

    def _on_hello(self, conn: _Conn, frame: fr.Frame) -> None:
        hello = frame.body
        if frame.kind != fr.Kind.HELLO or not isinstance(hello, fr.Hello):
            raise fr.RemoteProtocolError(f"expected HELLO first, got {frame.kind.name}")
        if hello.stage not in self.stage_index:
            raise fr.RemoteProtocolError(f"HELLO for unknown stage {hello.stage!r}")
        if not 0 <= hello.replica_id < self.plan.stage(hello.stage).replicas:
            raise fr.RemoteProtocolError(
                f"HELLO for slot {hello.replica_id} of {hello.stage}, which has "
                f"{self.plan.stage(hello.stage).replicas} replicas")
        conn.rid, conn.stage = next(self._rids), hello.stage
        self.conns[conn.rid] = conn
        conn.writer.send_nowait(fr.Kind.READY, body=fr.Ready(self.stage_index[hello.stage]))
        self._dirty.add(conn.rid)
        self._apply(self.core.handle(ReplicaUp(conn.rid, hello.stage, hello.replica_id)))

    def _on_lost(self, conn: _Conn) -> None:
        if conn.rid is None or conn.rid not in self.conns:
            return
        del self.conns[conn.rid]
        self._apply(self.core.handle(ReplicaDown(conn.rid)))
        self._flush_all()

    def _error(self, stage: str, levels: list[str], anc: tuple, body: Any) -> ErrorInfo | None:
        if not isinstance(body, fr.ErrorInfo):
            return None
        return ErrorInfo(stage, dict(zip(levels, anc[1:])), body.message, body.exc_type or None)

    # -- instructions out -----------------------------------------------------------------

    def _apply(self, instructions: list[Any]) -> None:
        for ins in instructions:
            if isinstance(ins, Invoke):
                stage = self.plan.stage(ins.stage)
                parts = [ins.args[p] for p in stage.params]
                self._send(ins.replica, fr.Kind.DATA, stage=self.stage_index[ins.stage],
                           request_id=ins.ancestry[0], ancestry=ins.ancestry[1:],
                           payload=b"".join(parts), part_sizes=[len(p) for p in parts])
            elif isinstance(ins, Open):
                self._send(ins.replica, fr.Kind.OPEN, stage=self.stage_index[ins.stage],
                           request_id=ins.prefix[0], ancestry=ins.prefix[1:])
            elif isinstance(ins, Flush):
                self._send(ins.replica, fr.Kind.FLUSH, stage=self.stage_index[ins.stage],
                           request_id=ins.prefix[0], ancestry=ins.prefix[1:],
                           status=1 if ins.opened else 0)
            elif isinstance(ins, Abort):
                self._send(ins.replica, fr.Kind.CANCEL, request_id=ins.request)
            elif isinstance(ins, Emit):
                handle = self.requests.get(ins.request)
                if handle is not None:
                    handle.queue.put_nowait(Event("output", ins.stage, ins.ancestry,
                                                  self._decode(ins)))
            elif isinstance(ins, Finish):
                handle = self.requests.pop(ins.request, None)
                if handle is None:
                    continue
                if ins.error is None:
                    handle.queue.put_nowait(Event("done"))
                else:
                    self.stats["requests_failed"] += 1
                    err = ins.error.to_stage_error()
                    handle.queue.put_nowait(Event("error", err.stage, err.ancestry, error=str(err),
                                                  exc_type=err.exc_type))

    def _decode(self, ins: Emit) -> Any:
        # A map stage's return annotation tells pydantic and protobuf payloads what they are;
        # a generator's or an aggregate's does not describe its items.
        spec = self.compiled.specs[ins.stage]
        hint = spec.return_annotation
        if hint is inspect.Signature.empty or spec.is_generator or spec.aggregate is not None:
            hint = None
        return self.codec.decode(ins.payload, hint)

    def _send(self, rid: int, kind: fr.Kind, **fields: Any) -> None:
        conn = self.conns.get(rid)
        if conn is None:
            return  # it died; the core has been told (ReplicaDown) and re-routes
        conn.writer.send_nowait(kind, **fields)
        self._dirty.add(rid)

    def _flush_all(self) -> None:
        for rid in self._dirty:
            conn = self.conns.get(rid)
            if conn is not None and not conn.transport.is_closing():
                data = conn.writer.flush()
                if data:
                    conn.transport.write(data)
        self._dirty.clear()
