"""``ServedIngress``: the served runtime (a supervised router and its replica processes) as an
``Ingress``, which is what ``altoflow serve`` puts behind the HTTP API."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from altoflow._errors import Overloaded
from altoflow.compiler import load_target
from altoflow.runtime.router import MAX_BUFFERED
from altoflow.runtime.stream import RequestStream
from altoflow.runtime.supervisor import Supervisor
from altoflow.runtime.timeline import TimelineRecorder
from altoflow.server.ingress import RescaleRefused, stage_json
from altoflow.wire import HANDSHAKE_TIMEOUT

logger = logging.getLogger("altoflow.server")


class ServedIngress:
    """The ``Ingress`` of the served runtime: a supervised router and its replica processes.

    ``async with`` starts them and waits until every replica has connected (a replica that
    cannot start, say because the target does not import, fails the start with its message).
    With ``wait_ready=False`` (``altoflow serve``, whose HTTP port then opens at once) it
    returns as soon as the router listens and the replicas are starting: until every replica
    is in, ``health()`` says ``starting`` and ``submit`` raises ``Overloaded`` (503 with
    ``Retry-After``); if the start fails, ``start_error`` holds why (``wait_started``).
    Output values are decoded as the consumer reads each request's stream, not in the router;
    with ``allow_pickle`` that is also where pickled values are loaded.

    Shutting down (``altoflow serve``, ``altoflow.server.shutdown``): ``drain`` refuses new
    requests (``Overloaded``: 503) while those in flight go on, ``cancel_all`` ends those still
    running (each stream ends there, and the HTTP API sends the ``Cancelled`` error event),
    leaving the block stops the replicas, and ``kill_now`` kills them without waiting.
    ``ray`` (a ``runtime.ray_placement.RayOptions``) makes the replicas Ray actors.
    """

    def __init__(self, target: str, *, replicas: dict[str, int] | None = None,
                 max_inflight: int = 1024, barrier: bool = False, allow_pickle: bool = False,
                 ready_timeout: float = 120, listen: tuple[str, int] | None = None,
                 secret: bytes = b"", remote: frozenset[str] = frozenset(),
                 tls: ssl.SSLContext | None = None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT, max_pending: int = 64,
                 max_connections: int = 1024, replay_limit: int = 100_000,
                 heartbeat: float = 1.0, restart: bool = True,
                 inline: frozenset[str] = frozenset(), max_buffered: int = MAX_BUFFERED,
                 fuse: bool = True, timeline: TimelineRecorder | None = None,
                 pin_requests: bool = False, ray: Any = None,
                 wait_ready: bool = True) -> None:
        self.supervisor = Supervisor(load_target(target).compiled, target, replicas=replicas,
                                     max_inflight=max_inflight, barrier=barrier,
                                     allow_pickle=allow_pickle, listen=listen, secret=secret,
                                     remote=remote, tls=tls, handshake_timeout=handshake_timeout,
                                     max_pending=max_pending, max_connections=max_connections,
                                     replay_limit=replay_limit, heartbeat=heartbeat,
                                     restart=restart, inline=inline, max_buffered=max_buffered,
                                     fuse=fuse, timeline=timeline, pin_requests=pin_requests, ray=ray)
        self.compiled = self.supervisor.compiled
        self.router = self.supervisor.router
        self.ready_timeout = ready_timeout
        self.wait_ready = wait_ready
        self.draining = False
        self.started = False  # every replica has been in (the start is over)
        self.start_error: BaseException | None = None
        self._starting: asyncio.Task | None = None

    async def __aenter__(self) -> ServedIngress:
        await self.supervisor.__aenter__()
        if not self.wait_ready:
            self._starting = asyncio.get_running_loop().create_task(self._start())
            return self
        try:
            await self._wait()
        except BaseException:
            await self.supervisor.stop()
            raise
        return self

    async def _wait(self) -> None:
        try:
            await self.supervisor.wait_ready(self.ready_timeout)
        except asyncio.TimeoutError:
            live, desired = self._counts()
            raise RuntimeError(f"{live} of {desired} replicas connected within {self.ready_timeout:g} s; "
                               f"a class stage's __init__ may still be loading (the replicas' logs "
                               f"say), or a replica cannot reach the router") from None
        self.started = True

    async def _start(self) -> None:
        try:
            await self._wait()
        except Exception as exc:
            self.start_error = exc
            logger.error("the server could not start: %s", exc)

    async def wait_started(self) -> bool:
        """Until the start is over: True once every replica is in, False if it failed."""
        if self._starting is not None:
            await asyncio.shield(self._starting)
        return self.started

    async def __aexit__(self, *exc: Any) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        self.cancel_all()
        await self.supervisor.stop()

    def drain(self) -> None:
        """Take no new request (``submit`` raises ``Overloaded``); those in flight go on."""
        self.draining = True

    def cancel_all(self) -> int:
        """Cancel every request in flight; returns how many there were."""
        requests = list(self.router.requests)
        for request in requests:
            self.router._cancel(request)
        return len(requests)

    def kill_now(self) -> None:
        """Kill every replica process and remove the socket directory, without waiting."""
        self.supervisor.kill_now()

    def submit(self, fields: dict[str, Any], *, request_id: str | None = None,
               partials: bool = True) -> RequestStream:
        if self.draining:
            raise Overloaded("the server is shutting down and takes no new requests; send this "
                             "one to another server, or retry once it is back")
        if not self.started:
            if self.start_error is not None:
                raise Overloaded(f"the server could not start ({self.start_error}) and is stopping")
            live, desired = self._counts()
            raise Overloaded(f"the server is starting: {live} of {desired} replicas are in; "
                             f"retry in 1 s (GET /healthz says ok once it takes requests)")
        return self.router.submit(fields, request_id=request_id, partials=partials)

    def _counts(self) -> tuple[int, int]:
        live = self.router.ready()
        return sum(live.values()), sum(self.router.desired().values())

    def stages(self) -> list[dict[str, Any]]:
        desired = self.router.desired()
        return [stage_json(name, desired[name], self.router.scale(name))
                for name in self.compiled.plan.names]

    async def rescale(self, stage: str, replicas: int) -> dict[str, Any]:
        """Rescale ``stage`` (``Supervisor.rescale``); once every replica is in."""
        if self.draining or self.supervisor._stopping:
            raise RescaleRefused("the server is shutting down: it scales nothing")
        if not self.started:
            raise RescaleRefused("the server is starting: rescale once every replica is in "
                                 "(GET /healthz says ok)")
        await self.supervisor.rescale(stage, replicas)
        return stage_json(stage, self.router.desired()[stage], self.router.scale(stage))

    def health(self) -> dict[str, Any]:
        live = self.router.ready()
        desired = self.router.desired()
        starting = self.router.starting()  # added by a rescale, not in yet: not down
        crash_loop = self.supervisor.crash_looping()
        silent = sorted(f"{stage}#{slot}" for stage, slot in self.router.silent)
        if self.draining or self.supervisor._stopping or self.start_error is not None:
            status = "stopping"
        elif not self.started:
            status = "starting"
        else:
            up = all(live[n] + starting[n] == desired[n] for n in desired)
            status = "ok" if up and not crash_loop and not silent else "degraded"
        return {
            "status": status,
            "runtime": "served",
            "in_flight": len(self.router.requests),
            "max_inflight": self.router.max_inflight,
            "replicas": {n: {"ready": live[n], "desired": desired[n]} for n in desired},
            "crash_loop": crash_loop,
            "silent": silent,
        }

    def metrics(self) -> bytes:
        return self.router.stats.render()

    def timeline(self, request_id: str) -> dict[str, Any] | None:
        return self.router.timeline_of(request_id)

    def timeline_missing(self, request_id: str) -> str:
        return self.router.timeline.missing(request_id)
