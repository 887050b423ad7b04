"""The router process's shell: replica sockets in, ``RouterCore`` decisions, frames out.

It owns no routing logic (that is ``core.RouterCore``); it turns frames into core events and
core instructions into frames, and hands each request's events to whoever submitted it. Writes
to each replica are coalesced into one buffer per event-loop turn: a write of many frames costs
about what a write of one frame does (one system call), so batching them is worth about a
factor of ten in frames per second.

The router never unpickles, and does not decode output values at all: an output's payload
bytes go into its event unread, and the request's ``RequestStream`` decodes them as its
consumer reads them, with ``output_codec`` (the one codec that may allow pickle, as
``altoflow serve --allow-pickle`` does). So a pickled value is only ever loaded in the task of
the request it belongs to, and a payload that cannot be decoded fails that request alone
instead of the replica connection it came over.

Flow control, from the client back to the generators (``core.py``, "Flow control"): each
request's events wait in its ``EventChannel`` until its consumer reads them, and a channel
holding ``max_buffered`` bytes pauses its request in the core until the consumer has read half
of it; the core's ``Grant``s go to the replicas as CREDIT frames, which let a fan-out invocation
pull more items from its generator. A request holds one of the ``max_inflight`` slots until
its consumer has closed its stream (read it to its end, or left), not only until it ended here.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from altoflow import _tracing
from altoflow._errors import Overloaded, user_traceback
from altoflow._logging import log_stage_failure
from altoflow._result import Event, done_event, output_event, partial_event
from altoflow.compiler import CompiledPipeline
from altoflow import wire as fr
from altoflow.wire import Codec, DecodeError
from altoflow.runtime.core import (
    Abort, Cancel, Drained, Emit, ErrorInfo, Finish, Flush, FlushDone, Grant, Invoke, Open, Pause,
    ReplicaDown, ReplicaUp, Rescale, Resume, RouterCore, SlotState, Submit,
)
from altoflow.runtime import pipe
from altoflow.runtime.fusion import FusedErrorBody
from altoflow.runtime.metrics import ServerMetrics
from altoflow.runtime.partials import PartialBuffer
from altoflow.runtime.stream import EventChannel, RequestStream
from altoflow.runtime import timeline as tl

logger = logging.getLogger("altoflow.router")

SILENT_BEATS = 5  # heartbeat intervals with nothing from a replica before it is marked down

MAX_BUFFERED = 4 * 1024 * 1024
"""The default bound of one request's unread answer, in bytes (``altoflow serve --max-buffered-mib``)."""

_DATA, _ACK, _FLUSH_DONE, _HEARTBEAT = fr.Kind.DATA, fr.Kind.ACK, fr.Kind.FLUSH_DONE, fr.Kind.HEARTBEAT
_PARTIAL = fr.Kind.PARTIAL
_UNTRACED = (None, b"")  # a request admitted before tracing was turned on


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
    heard: bool = True  # anything arrived since the last heartbeat check
    inline: bool = False  # a replica in this process (``connect_inline``): it dies with the router
    index: int = -1  # its stage's index in the plan (frames name stages by index)
    reader: fr.FrameReader = field(default_factory=fr.FrameReader)
    writer: fr.FrameWriter = field(default_factory=fr.FrameWriter)


class TcpStatistics(NamedTuple):
    pending: int  # TCP connections that have not sent a verified HELLO yet
    authenticated: int  # TCP replicas let in
    refused: int  # connections closed at once: over max_pending or max_connections
    timed_out: int  # connections dropped for not finishing the handshake in time
    pending_buffered_bytes: int  # what the router holds of the pending ones' partial frames


class _Protocol(asyncio.Protocol):
    def __init__(self, router: "Router", tcp: bool = False, tls: ssl.SSLContext | None = None) -> None:
        self.conn = _Conn(router)
        self.tcp = tcp
        self.tls = tls  # TCP: the TLS the connection is upgraded to before anything else
        self.counted = False  # TCP: counted in the router's connection caps
        self.deadline: asyncio.TimerHandle | None = None
        self.upgrade: asyncio.Task | None = None  # its TLS handshake, while it runs

    def connection_made(self, transport: Any) -> None:
        self.conn.transport = transport
        if self.tcp:
            # A TCP peer is a stranger until its HELLO is verified: it gets small frames, a
            # deadline, and no connection at all past the caps. It is counted from its first
            # byte: a TLS handshake that never ends holds a pending place too (until its own
            # deadline), so a flood of them is turned away like any other.
            router = self.conn.router
            if not router._tcp_admit(self):
                transport.abort()
                return
            self.conn.reader = fr.FrameReader(max_frame_size=fr.PRE_AUTH_MAX_FRAME_SIZE)
            if self.tls is None:
                self._challenge()
            else:
                self.upgrade = asyncio.get_running_loop().create_task(self._start_tls(transport))

    async def _start_tls(self, transport: Any) -> None:
        router = self.conn.router
        try:
            upgraded = await asyncio.get_running_loop().start_tls(
                transport, self, self.tls, server_side=True,  # type: ignore[arg-type]
                ssl_handshake_timeout=router.handshake_timeout)
        except Exception as exc:  # a handshake that failed, timed out or was cut
            if isinstance(exc, TimeoutError):
                router._tcp_timed_out += 1
            transport.abort()
            self.connection_lost(exc)  # asyncio does not tell the protocol of a failed upgrade
            return
        finally:
            self.upgrade = None
        if upgraded is None or upgraded.is_closing():
            self.connection_lost(None)
            return
        self.conn.transport = upgraded
        self._challenge()

    def _challenge(self) -> None:
        # Over TCP the replica must prove it knows the shared secret before anything else.
        self.deadline = asyncio.get_running_loop().call_later(
            self.conn.router.handshake_timeout, self._handshake_expired)
        self.conn.challenge = os.urandom(fr.NONCE_SIZE)
        self.conn.transport.write(fr.encode_frame(fr.Kind.CHALLENGE, body=fr.Challenge(self.conn.challenge)))

    def authenticated(self) -> None:
        """Its HELLO passed: the replica's frames may now be as big as any replica's."""
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.conn.reader.statistics().buffered_bytes:
            # It sent more before its READY came back, which a replica never does.
            raise fr.RemoteProtocolError("a replica sent frames after its HELLO before the router's READY")
        self.conn.reader = fr.FrameReader()
        self.conn.router._tcp_pending.discard(self)

    def _handshake_expired(self) -> None:
        self.deadline = None
        router = self.conn.router
        router._tcp_timed_out += 1
        if router._tcp_timed_out == 1 or router._tcp_timed_out % 100 == 0:  # a flood logs little
            logger.warning("a connecting replica did not finish the handshake in %g s and was "
                           "dropped (%d so far; raise --handshake-timeout if replicas are that "
                           "slow to answer)", router.handshake_timeout, router._tcp_timed_out)
        self.conn.transport.abort()

    def data_received(self, data: bytes) -> None:
        router = self.conn.router
        self.conn.heard = True
        if router._recording:  # the moment the timelines give every frame of this read
            router._read_at = time.perf_counter()
        try:
            for frame in self.conn.reader.feed(data):
                if self.tcp and self.conn.stage is None:
                    router._on_hello(self.conn, frame)
                    self.authenticated()
                    continue
                router._on_frame(self.conn, frame)
        except fr.ProtocolError as exc:
            # The peer's mistake: drop that replica, keep serving everyone else.
            if self.conn.stage:
                who = f"replica {self.conn.stage} (connection {self.conn.rid})"
            elif self.tcp:
                who = (f"a connecting replica (limited to {fr.PRE_AUTH_MAX_FRAME_SIZE}-byte frames "
                       f"until its HELLO passes)")
            else:
                who = "a connecting replica"
            logger.warning("%s broke the protocol and was dropped: %s", who, exc)
            self.conn.transport.close()
        router._flush_soon()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.counted:
            self.counted = False
            self.conn.router._tcp_pending.discard(self)
            self.conn.router._tcp_connections -= 1
        self.conn.router._on_lost(self.conn)


class Router:
    """One router: replicas connect to it, requests are submitted to it.

    ``codec`` encodes request fields, and must refuse pickle; ``output_codec`` is what each
    request's consumer decodes output values with, as it reads them (see the module's docstring).
    ``max_buffered`` bounds a request's unread answer, in bytes: past it the request is paused
    until its consumer catches up. ``fanout_window`` (None: no pacing, for replicas that hold
    their outputs back anyway, as in barrier mode) is the core's window of fan-out invocations.
    """

    def __init__(self, compiled: CompiledPipeline, *, codec: Codec | None = None,
                 output_codec: Codec | None = None, max_inflight: int = 1024,
                 seed: int | None = None, replay_limit: int = 100_000,
                 heartbeat: float | None = 1.0,
                 on_silent: Callable[[str, int], None] | None = None,
                 max_buffered: int = MAX_BUFFERED,
                 fanout_window: int | None = fr.FANOUT_WINDOW,
                 timeline: tl.TimelineRecorder | None = None,
                 pin_requests: bool = False,
                 on_drained: Callable[[str, int], None] | None = None) -> None:
        codec = codec or Codec()
        if codec.allow_pickle:
            raise ValueError(
                "the router never unpickles: give Router a codec without allow_pickle, and "
                "pass Codec(allow_pickle=True) as output_codec for the requests' consumers")
        self.compiled = compiled
        self.plan = compiled.plan
        if max_buffered < 1:
            raise ValueError(f"max_buffered must be at least 1 byte, not {max_buffered}")
        self.core = RouterCore(self.plan, seed=seed, replay_limit=replay_limit,
                               fanout_window=fanout_window,
                               fanout_credit=fr.FANOUT_CREDIT if fanout_window is not None else None,
                               pin_requests=pin_requests)
        self._fused: dict[int, int] = {}  # fan-out's stage index -> its fused aggregate's
        # Request fields that only inline replicas take: handed to them as they are (``by_reference``).
        self._local_fields: frozenset[str] = frozenset()
        self.codec = codec
        self.output_codec = output_codec or Codec()
        self.max_inflight = max_inflight
        self.max_buffered = max_buffered
        self.stage_index = {name: i for i, name in enumerate(self.plan.names)}
        self.conns: dict[int, _Conn] = {}
        self.requests: dict[int, EventChannel] = {}  # request id -> its events' buffer
        # Requests whose consumer has not closed their stream, each holding a max_inflight slot:
        # those in self.requests, and those that ended here and whose answer is still unread.
        self.streams: dict[int, EventChannel] = {}
        self._ids = itertools.count(1)
        self._rids = itertools.count(1)
        self._dirty: set[int] = set()
        self._flush_scheduled = False
        self.stats = ServerMetrics(self.plan.names, requests_in_flight=lambda: len(self.streams),
                                   replicas_live=self.ready,
                                   answer_buffered_bytes=self.buffered_bytes)
        self.stats.cores.add(self.core)
        self._started: dict[tuple[int, tuple], float] = {}  # (replica, ancestry) -> dispatch time
        self._admitted: dict[int, float] = {}
        # A request's id for the log (its X-Request-Id), and its latest failure from a replica
        # with that failure's traceback, for the error event if the failure ends the request.
        self._names: dict[int, str] = {}
        # While tracing is on: request -> (its span, that span's context as DATA frames carry it).
        self._traces: dict[int, tuple[Any, bytes]] = {}
        self._failures: dict[int, tuple[ErrorInfo, str]] = {}
        self.server: asyncio.AbstractServer | None = None
        # Replicas send a HEARTBEAT every `heartbeat` seconds; one silent for SILENT_BEATS of
        # them is marked down (its connection closed, its stateless work redispatched) and
        # `on_silent(stage, slot)` is called; `silent` keeps the latest such replicas for /healthz.
        self.heartbeat = heartbeat
        self.on_silent = on_silent
        # A replica on a slot that a rescale removed is done: drained (it is told SHUTDOWN), or
        # down while draining. `on_drained(stage, slot)` tells the supervisor not to start it again.
        self.on_drained = on_drained
        # Slots a rescale added whose replica has not connected yet: starting, not down.
        self._grown: set[tuple[str, int]] = set()
        self.silent: dict[tuple[str, int], int] = {}  # (stage, slot) -> connection id marked down
        self._quiet: dict[int, int] = {}  # connection id -> checks in a row with nothing heard
        self._heartbeat_task: asyncio.Task | None = None
        self._output_hints = {name: _output_hint(compiled.specs[name]) for name in self.plan.names}
        self._tcp_pending: set[_Protocol] = set()
        self._tcp_connections = 0
        self._tcp_refused = 0
        self._tcp_timed_out = 0
        # Request timelines (runtime.timeline): the recent requests' dispatches, outputs and
        # acknowledgements. The per-item path tests `_recording` (the recorder's live
        # recordings) for emptiness before anything else.
        self.timeline = tl.TimelineRecorder() if timeline is None else timeline
        self._recording = self.timeline.live
        # When the frames being handled were read: what a replica sent in one write is seen at
        # one moment (an invocation's last outputs and its ACK, held together under --barrier,
        # end together), and no frame pays for a clock reading of its own.
        self._read_at = 0.0

    async def start(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_unix_server(lambda: _Protocol(self), path)
        if self.heartbeat is not None and self._heartbeat_task is None:
            self._heartbeat_task = loop.create_task(self._check_heartbeats())

    async def _check_heartbeats(self) -> None:
        assert self.heartbeat is not None
        while True:
            await asyncio.sleep(self.heartbeat)
            for rid, conn in list(self.conns.items()):
                if conn.heard:
                    conn.heard = False
                    self._quiet.pop(rid, None)
                    continue
                quiet = self._quiet[rid] = self._quiet.get(rid, 0) + 1
                if quiet < SILENT_BEATS:
                    continue
                rep = self.core.replicas[rid]
                logger.warning("replica %s#%s (connection %d) sent nothing for %.1f s (%d heartbeats): "
                               "marked down, its work goes elsewhere", rep.stage, rep.slot, rid,
                               quiet * self.heartbeat, quiet)
                self.silent[(rep.stage, rep.slot)] = rid
                del self._quiet[rid]
                conn.transport.abort()
                self._on_lost(conn)
                if self.on_silent is not None:
                    self.on_silent(rep.stage, rep.slot)

    def connect_inline(self, protocol: Any) -> asyncio.BaseTransport:
        """Join a replica protocol (made by the factory ``protocol``) to this router in memory;
        returns the replica's transport (``Worker.serve(connect=...)``; see ``runtime.pipe``).
        Frames cross as objects, never encoded, so both ends read and write ``FrameList``s."""

        def router_end() -> _Protocol:
            proto = _Protocol(self)
            proto.conn.reader = proto.conn.writer = pipe.FrameList()  # type: ignore[assignment]
            proto.conn.inline = True
            return proto

        _, replica_end = pipe.connect_pair(router_end, protocol)
        return replica_end

    async def listen_tcp(self, host: str, port: int, secret: bytes, *,
                         tls: ssl.SSLContext | None = None,
                         handshake_timeout: float = fr.HANDSHAKE_TIMEOUT,
                         max_pending: int = 64, max_connections: int = 1024) -> int:
        """Accept replicas from other machines on host:port; returns the port (0 picks one).

        With ``tls`` (``altoflow.runtime.tls.server_context``) the port serves TLS only. A peer
        has ``handshake_timeout`` seconds for the TLS handshake and as many again to send a
        HELLO that proves the ``secret``; until then its frames may be at most
        ``PRE_AUTH_MAX_FRAME_SIZE`` bytes. A connection past ``max_pending`` not yet let in, or
        past ``max_connections`` in all, is closed at once.
        """
        if not secret:
            raise ValueError("TCP replicas need a shared secret (--secret-file or ALTOFLOW_SECRET)")
        if not handshake_timeout > 0:
            raise ValueError(f"the handshake timeout must be above 0 s, not {handshake_timeout}")
        if not 1 <= max_pending <= max_connections:
            raise ValueError(f"need 1 <= max_pending <= max_connections, not {max_pending} and "
                             f"{max_connections}")
        self.secret = secret
        self.handshake_timeout = handshake_timeout
        self.max_pending = max_pending
        self.max_connections = max_connections
        loop = asyncio.get_running_loop()
        # TLS is started by each connection itself once it is admitted (_Protocol._start_tls),
        # so that connections in mid-handshake count against the caps.
        self.tcp_server = await loop.create_server(lambda: _Protocol(self, tcp=True, tls=tls), host, port)
        return self.tcp_server.sockets[0].getsockname()[1]

    def _tcp_admit(self, proto: _Protocol) -> bool:
        if len(self._tcp_pending) >= self.max_pending or self._tcp_connections >= self.max_connections:
            self._tcp_refused += 1
            if self._tcp_refused == 1 or self._tcp_refused % 1000 == 0:
                logger.warning("refused a TCP connection (%d so far): %d connecting replicas (the most "
                               "is %d), %d connections (the most is %d)", self._tcp_refused,
                               len(self._tcp_pending), self.max_pending, self._tcp_connections,
                               self.max_connections)
            return False
        proto.counted = True
        self._tcp_pending.add(proto)
        self._tcp_connections += 1
        return True

    def tcp_statistics(self) -> TcpStatistics:
        pending = self._tcp_pending
        return TcpStatistics(
            len(pending), self._tcp_connections - len(pending), self._tcp_refused,
            self._tcp_timed_out,
            sum(p.conn.reader.statistics().buffered_bytes for p in pending))

    async def close(self) -> None:
        for proto in list(self._tcp_pending):  # strangers get no SHUTDOWN, only the hang-up
            if proto.deadline is not None:
                proto.deadline.cancel()
                proto.deadline = None
            proto.conn.transport.abort()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        for conn in list(self.conns.values()):
            conn.writer.send_nowait(fr.Kind.SHUTDOWN)
            conn.transport.write(conn.writer.flush())
            conn.transport.close()
        for server in (self.server, getattr(self, "tcp_server", None)):
            if server is not None:
                server.close()
                await server.wait_closed()

    # -- requests -------------------------------------------------------------------------

    def submit(self, fields: dict[str, Any], *, request_id: str | None = None,
               partials: bool = True) -> RequestStream:
        """Start a request; its events (outputs, then done or error) come from the stream.

        Raises ``InputError`` for fields that do not fit the request schema, and ``Overloaded``
        when ``max_inflight`` requests are in flight. Closing the stream cancels the request.
        ``request_id`` names it in the log (the router's own number for it otherwise).
        ``partials=False`` leaves its stages' ``partial`` deltas out of the stream: an inline
        replica makes none (``partials_wanted``), a replica process's are dropped as they arrive.
        """
        values = self.compiled.validate_request(fields)
        if len(self.streams) >= self.max_inflight:
            self.stats.rejected += 1
            raise Overloaded(f"the server is busy: {len(self.streams)} requests in flight (running, or "
                             f"with answers not read yet), the most it takes (--max-inflight "
                             f"{self.max_inflight}); retry in 1 s")
        local = self._local_fields
        encoded = {name: pipe.Local(v) if name in local else self.codec.encode(v)
                   for name, v in values.items()}
        request = next(self._ids)
        channel = EventChannel(self.max_buffered, lambda full: self._pressure(request, full))
        channel.partials = PartialBuffer() if partials else None
        self.requests[request] = channel
        self.streams[request] = channel
        if request_id is not None:
            self._names[request] = request_id
        if _tracing.TRACER is not None:
            span = _tracing.start_request(self.plan.name, request_id)
            self._traces[request] = (span, _tracing.to_bytes(span))
        self._admitted[request] = now = time.perf_counter()
        self.timeline.begin(request, str(request) if request_id is None else request_id, now)
        self.stats.admitted += 1
        self._apply(self.core.handle(Submit(request, encoded)))
        self._flush_soon()
        return RequestStream(channel, lambda: self._cancel(request), request, self._decode_output,
                             channel.partials)

    def _decode_output(self, event: Event) -> Event:
        """Run by the request's consumer as it reads ``event``: its payload bytes become its value."""
        if type(event.value) is pipe.Local:  # from an inline replica: the value itself
            event.__dict__["value"] = event.value.value
            return event
        try:
            value = self.output_codec.decode(event.value, self._output_hints[event.stage])
        except DecodeError as exc:
            return Event("error", event.stage, event.ancestry, exc_type="DecodeError",
                         error=f"stage '{event.stage}' produced a value this server cannot "
                               f"decode: {exc}")
        # The event was built for this consumer and nobody has seen it yet: fill its value in
        # rather than build a second one per item.
        event.__dict__["value"] = value
        return event

    def _pressure(self, request: int, full: bool) -> None:
        """The request's unread answer reached ``max_buffered`` (``full``), or was read down to
        half of it: pause the request in the core, or let it go on."""
        if request in self.requests:
            self._apply(self.core.handle(Pause(request) if full else Resume(request)))
            self._schedule_flush()

    def buffered_bytes(self) -> int:
        """What the unread answers of all requests hold (``EventChannel``'s count)."""
        return sum(channel.statistics().buffered_bytes for channel in list(self.streams.values()))

    def _cancel(self, request: int) -> None:
        # The consumer closed the stream (read to its end, or left): its slot is free.
        self.streams.pop(request, None)
        channel = self.requests.pop(request, None)
        if channel is None:
            return  # it had finished
        channel.close()
        self._finished(request, "cancelled")
        self._apply(self.core.handle(Cancel(request)))
        self._schedule_flush()

    def _finished(self, request: int, outcome: str, error: ErrorInfo | None = None) -> None:
        if self._traces:
            trace = self._traces.pop(request, None)
            if trace is not None:
                _tracing.end_request(trace[0], outcome, error)
        self._names.pop(request, None)
        self._failures.pop(request, None)
        started = self._admitted.pop(request)
        now = time.perf_counter()
        self.stats.finished(outcome, now - started)  # type: ignore[arg-type]
        self.timeline.end(request, outcome, now)

    def timeline_of(self, request_id: str) -> dict[str, Any] | None:
        """The timeline of a recent request, by its request id (``X-Request-Id``, or the
        router's own number for it as a string when it was submitted without one), as
        ``GET /v1/requests/{id}/timeline`` returns it; None when it is not kept."""
        rec = self.timeline.get(request_id)
        if rec is None:
            return None
        replicas = self.core.replicas
        plan, count = self.plan, self.core.count
        if any(count[s.name] != s.replicas for s in plan.stages):  # rescaled: today's counts
            plan = plan.model_copy(update={"stages": [
                s.model_copy(update={"replicas": count[s.name]}) for s in plan.stages]})
        return tl.timeline_json(rec, plan, lambda rid: (replicas[rid].stage, replicas[rid].slot))

    def live_slots(self) -> set[tuple[str, int]]:
        """(stage, slot) of every connected replica."""
        return {(rep.stage, rep.slot) for rep in self.core.replicas.values() if rep.state == "ready"}

    def ready(self) -> dict[str, int]:
        """Live replicas per stage, on its slots now (not counting those a rescale removed)."""
        live = {s.name: 0 for s in self.plan.stages}
        replicas = self.core.replicas
        for rid, conn in self.conns.items():
            if conn.stage is not None and replicas[rid].state == "ready":
                live[conn.stage] += 1
        return live

    def starting(self) -> dict[str, int]:
        """Per stage, the slots a rescale added whose replica has not connected yet."""
        out = {s.name: 0 for s in self.plan.stages}
        for stage, _slot in self._grown:
            out[stage] += 1
        return out

    def desired(self) -> dict[str, int]:
        """Each stage's replica count now (the plan's, or the latest ``rescale``)."""
        return dict(self.core.count)

    def scale(self, stage: str) -> list[SlotState]:
        """``stage``'s slots and their states (``RouterCore.scale``)."""
        return self.core.scale(stage)

    def rescale(self, stage: str, replicas: int) -> list[SlotState]:
        """Run ``stage`` on ``replicas`` replicas from now on (see "Rescaling" in ``core.py``):
        new slots take replicas that connect for them, removed ones drain and are told
        SHUTDOWN. Returns the stage's slots. ``ValueError`` names an unknown stage or a bad count."""
        if stage not in self.stage_index:
            raise ValueError(f"no stage named {stage!r}; stages: {', '.join(self.plan.names)}")
        if type(replicas) is not int or replicas < 1:
            raise ValueError(f"replicas takes a whole number >= 1 (a stage runs on at least one "
                             f"replica), not {replicas!r}")
        old = self.core.count[stage]
        self._apply(self.core.handle(Rescale(stage, replicas)))
        live = self.core.slots[stage]
        self._grown = {(s, slot) for s, slot in self._grown if s != stage or slot < replicas}
        self._grown |= {(stage, slot) for slot in range(old, replicas) if slot not in live}
        if old != replicas:
            logger.info("stage %s: %d -> %d replicas", stage, old, replicas)
        self._schedule_flush()
        return self.core.scale(stage)

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
            if frame.stage != conn.index:
                stage = self._fused_output(conn, frame.stage)
            self.stats.items[stage] += 1
            if self._recording:
                self.timeline.record(anc[0], self._read_at, tl.OUTPUT | conn.rid << 5, anc)  # type: ignore[operator]
            self._apply(self.core.output(conn.rid, stage, anc, frame.payload))  # type: ignore[arg-type]
        elif kind is _ACK:
            started = self._started.pop((conn.rid, anc), None)
            if started is not None:
                self.stats.invocation[stage].observe(time.perf_counter() - started)
            if self._recording:
                self.timeline.record(anc[0], self._read_at,
                                     tl.code(tl.ACK, conn.rid, frame.status), anc)  # type: ignore[arg-type]
            error = None
            if frame.status == 2:
                error = self._error(stage, self.core.stages[stage].levels_in, anc, frame.body)
                self.stats.errors[stage if error is None else error.stage] += 1
                self._failed(anc[0], error, frame.body)
            elif frame.body is not None:  # dropped under on_error="drop": only logged
                self._dropped(stage, self.core.stages[stage].levels_in, anc, frame.body)
            self._apply(self.core.ack(conn.rid, stage, anc, fr.STATUS_NAMES[frame.status], error))  # type: ignore[arg-type]
        elif kind is _FLUSH_DONE:
            if self._recording:
                self.timeline.record(anc[0], self._read_at,
                                     tl.code(tl.FLUSH_DONE, conn.rid, frame.status), anc)  # type: ignore[arg-type]
            levels = self.core.stages[stage].route_key or []
            error = self._error(stage, levels, anc, frame.body)
            if frame.status != 2:
                if error is not None:  # dropped under on_error="drop": only logged
                    self._dropped(stage, levels, anc, frame.body)
                error = None
            else:
                self._failed(anc[0], error, frame.body)
            self._apply(self.core.handle(FlushDone(conn.rid, stage, anc, fr.STATUS_NAMES[frame.status], error)))  # type: ignore[arg-type]
        elif kind is _PARTIAL:
            if frame.stage != conn.index:  # a partial of the aggregate folded into this fan-out
                stage = self._fused_output(conn, frame.stage)
            self._partial(stage, anc, frame.payload)
        elif kind is not _HEARTBEAT:
            raise fr.RemoteProtocolError(f"the router does not take {kind.name} frames from replicas")

    def partials_wanted(self, request: int) -> bool:
        """Whether request ``request`` is running and its client takes its partials: what an
        inline replica asks before it gives an invocation anywhere to send them."""
        channel = self.requests.get(request)
        return channel is not None and channel.partials is not None

    def _partial(self, stage: str, anc: tuple, payload: Any) -> None:
        """A stage's ``altoflow.partial`` delta: for its request's events only. The core never
        hears of it (no routing, no credit, no progress), and a request that has ended or was
        cancelled drops it; its ``PartialBuffer`` merges it or drops it at the cap."""
        channel = self.requests.get(anc[0])
        if channel is None or channel.partials is None:  # ended, or its client wants none
            return
        # An inline replica's delta is the str itself; a process's is UTF-8 (a peer's bad
        # bytes become U+FFFD rather than an error).
        delta = payload if type(payload) is str else bytes(payload).decode("utf-8", "replace")
        event = partial_event(stage, dict(zip(self.core.stages[stage].levels_in, anc[1:])), delta)
        if channel.partials.offer(event):
            channel.send_nowait(event)

    def _on_hello(self, conn: _Conn, frame: fr.Frame) -> None:
        hello = frame.body
        if frame.kind != fr.Kind.HELLO or not isinstance(hello, fr.Hello):
            raise fr.RemoteProtocolError(f"expected HELLO first, got {frame.kind.name}")
        if hello.stage not in self.stage_index:
            raise fr.RemoteProtocolError(f"HELLO for unknown stage {hello.stage!r}")
        if not 0 <= hello.slot < self.core.count[hello.stage]:
            raise fr.RemoteProtocolError(
                f"HELLO for slot {hello.slot} of {hello.stage}, which has "
                f"{self.core.count[hello.stage]} replicas")
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
        conn.index = self.stage_index[hello.stage]
        self.silent.pop((hello.stage, hello.slot), None)
        self._grown.discard((hello.stage, hello.slot))
        self.conns[conn.rid] = conn
        conn.writer.send_nowait(fr.Kind.READY, body=fr.Ready(self.stage_index[hello.stage], proof))
        self._dirty.add(conn.rid)
        self._apply(self.core.handle(ReplicaUp(conn.rid, hello.stage, hello.slot,
                                               replay=not conn.inline)))

    def _on_lost(self, conn: _Conn) -> None:
        if conn.rid is None or conn.rid not in self.conns:
            return
        del self.conns[conn.rid]
        self._quiet.pop(conn.rid, None)
        for key in [k for k in self._started if k[0] == conn.rid]:
            del self._started[key]  # never acknowledged: the core re-dispatches them
        poisoned = self.core.poisoned[conn.stage]  # type: ignore[index]
        rep = self.core.replicas[conn.rid]
        if rep.state == "draining" and self.on_drained is not None:
            self.on_drained(rep.stage, rep.slot)  # it went before it had drained: not to restart
        self._apply(self.core.handle(ReplicaDown(conn.rid)))
        if self.core.poisoned[conn.stage] > poisoned:  # type: ignore[index]
            logger.warning("stage %s: %d item(s) killed every replica that ran them and were given "
                           "up (ReplicaDied); the story has them as 'poison'", conn.stage,
                           self.core.poisoned[conn.stage] - poisoned)  # type: ignore[index]
        self._schedule_flush()

    def _failed(self, request: int, error: ErrorInfo | None, body: Any) -> None:
        """A replica reported a stage's failure: log it, with the user's traceback, and keep
        that traceback for the request's error event."""
        if error is None:
            return
        traceback = body.traceback if isinstance(body, fr.ErrorBody) else ""
        log_stage_failure(logger, self._names.get(request, str(request)), error.stage,
                          error.ancestry, error.detail, traceback)
        if request in self.requests:
            self._failures[request] = (error, traceback)

    def fuse(self, pairs: dict[str, str]) -> None:
        """Fuse each fan-out of ``pairs`` into its aggregate (``runtime.fusion``): the fan-out's
        inline replicas send that aggregate's results. Before any replica is up."""
        self.core.fuse(pairs)
        self._fused = {self.stage_index[a]: self.stage_index[b] for a, b in pairs.items()}

    def by_reference(self, inline: Iterable[str]) -> None:
        """Hand each request field that only stages of ``inline`` take to their replicas as the
        validated value itself (``runtime.pipe.Local``), not encoded for each invocation to
        decode: what ``altoflow.run`` gives a stage, too. Before any request."""
        inline = set(inline)
        takers: dict[str, set[str]] = {}
        for stage in self.plan.stages:
            for name in stage.fields:
                takers.setdefault(name, set()).add(stage.name)
        self._local_fields = frozenset(f for f, stages in takers.items() if stages <= inline)

    def _fused_output(self, conn: _Conn, index: int) -> str:
        if not conn.inline or self._fused.get(conn.index) != index:
            raise fr.RemoteProtocolError(
                f"replica of {conn.stage} sent an output of stage #{index}, not its own")
        return self.plan.names[index]

    def fused_dropped(self, request: int, error: ErrorInfo) -> None:
        """Log an item of ``request`` that a fused invocation dropped (``on_error="drop"``), as
        ``_dropped`` logs an unfused one."""
        traceback = user_traceback(error.exception) if error.exception is not None else ""
        log_stage_failure(logger, self._names.get(request, str(request)), error.stage,
                          error.ancestry, error.detail, traceback, dropped=True)

    def _dropped(self, stage: str, levels: list[str], anc: tuple, body: Any) -> None:
        error = self._error(stage, levels, anc, body)
        if error is not None:
            log_stage_failure(logger, self._names.get(anc[0], str(anc[0])), stage, error.ancestry,
                              error.detail, body.traceback, dropped=True)

    def _error(self, stage: str, levels: list[str], anc: tuple, body: Any) -> ErrorInfo | None:
        if not isinstance(body, fr.ErrorBody):
            return None
        if type(body) is FusedErrorBody:  # where in a fused invocation (runtime.fusion)
            return ErrorInfo(body.stage, body.ancestry or {}, body.message, body.exc_type or None)
        return ErrorInfo(stage, dict(zip(levels, anc[1:])), body.message, body.exc_type or None)

    # -- instructions out -----------------------------------------------------------------

    def _apply(self, instructions: list[Any]) -> None:
        for ins in instructions:
            t = type(ins)
            if t is Invoke:
                conn = self.conns.get(ins.replica)
                if conn is None:
                    continue  # it died; the core has been told (ReplicaDown) and re-routes
                anc = ins.ancestry
                self._started[(ins.replica, anc)] = now = time.perf_counter()
                if self._recording:
                    self.timeline.record(anc[0], now, ins.replica << 5, anc)  # tl.DISPATCH is 0
                conn.writer.inputs(self.stage_index[ins.stage], anc[0], anc[1:],
                                   [ins.args[p] for p in self.core.stages[ins.stage].params],
                                   self._traces.get(anc[0], _UNTRACED)[1] if self._traces else b"")
                self._dirty.add(ins.replica)
            elif t is Emit:
                channel = self.requests.get(ins.request)
                if channel is not None:  # the payload stays bytes: the consumer decodes it
                    channel.send_nowait(output_event(ins.stage, ins.ancestry, ins.payload))
            elif t is Finish:
                channel = self.requests.pop(ins.request, None)
                if channel is None:
                    continue
                if ins.error is None:
                    channel.send_nowait(done_event())
                    self._finished(ins.request, "done")
                else:
                    e = ins.error
                    failure = self._failures.get(ins.request)
                    traceback = None
                    if failure is not None and failure[0] is e:
                        traceback = failure[1] or None
                    else:  # the core's own verdict (replicas died running the item, ...)
                        log_stage_failure(logger, self._names.get(ins.request, str(ins.request)),
                                          e.stage, e.ancestry, e.detail, None)
                    channel.send_nowait(Event("error", e.stage, e.ancestry, error=e.detail,
                                              exc_type=e.exc_type, traceback=traceback))
                    self._finished(ins.request, "error", e)
                channel.end()
            elif t is Open:
                self._item(ins.replica, fr.Kind.OPEN, self.stage_index[ins.stage], ins.prefix)
            elif t is Flush:
                if self._recording:
                    self.timeline.record(ins.prefix[0], time.perf_counter(),
                                         tl.code(tl.FLUSH, ins.replica), ins.prefix)
                self._item(ins.replica, fr.Kind.FLUSH, self.stage_index[ins.stage], ins.prefix,
                           opened=ins.opened)
            elif t is Abort:
                self._item(ins.replica, fr.Kind.CANCEL, 0, (ins.request,))
            elif t is Grant:
                self._item(ins.replica, fr.Kind.CREDIT, self.stage_index[ins.stage], ins.ancestry)
            elif t is Drained:
                conn = self.conns.get(ins.replica)
                logger.info("replica %s#%s (connection %d) has drained: stopping it", ins.stage,
                            ins.slot, ins.replica)
                if self.on_drained is not None:
                    self.on_drained(ins.stage, ins.slot)
                if conn is not None:
                    conn.writer.send_nowait(fr.Kind.SHUTDOWN)
                    self._dirty.add(ins.replica)
            else:
                raise TypeError(f"unknown instruction {ins!r}")

    def _item(self, rid: int, kind: fr.Kind, stage: int, anc: tuple, **fields: Any) -> None:
        conn = self.conns.get(rid)
        if conn is None:
            return  # it died; the core has been told (ReplicaDown) and re-routes
        conn.writer.item(kind, stage, anc[0], anc[1:], **fields)
        self._dirty.add(rid)

    def _flush_soon(self) -> None:
        # With at most one request in flight, nothing else could join these writes, so they go
        # now rather than a loop turn later (the worker does the same for a lone invocation).
        if len(self.requests) <= 1:
            self._flush_all()
        else:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        # One write per replica per event-loop turn, however many frames the turn produced.
        if self._dirty and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_all)

    def _flush_all(self) -> None:
        self._flush_scheduled = False
        # An inline replica reads its frames inside this call (runtime.pipe); nothing it does
        # there reaches the router before its own flush, but the set is swapped first anyway.
        dirty, self._dirty = self._dirty, set()
        for rid in dirty:
            conn = self.conns.get(rid)
            if conn is not None and not conn.transport.is_closing():
                data = conn.writer.flush()
                if data:
                    if conn.inline:
                        conn.transport.write_now(data)
                    else:
                        conn.transport.write(data)
