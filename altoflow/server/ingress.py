"""Where requests enter a running pipeline: the ``Ingress`` interface, and ``LocalIngress``.

The HTTP layer (``altoflow.server.http``) knows nothing of routers, workers or executors: it
talks to one object that follows ``Ingress``. ``LocalIngress`` runs each request on the
in-process reference executor; ``altoflow.server.served.ServedIngress`` runs it on worker
processes. Both hand out the same ``RequestStream`` of ``altoflow.Event``
(``altoflow.runtime.stream``): outputs as they happen, then exactly one ``done`` or ``error``
event, unless the request was cancelled first. Both keep the same metrics
(``altoflow.runtime.metrics``).

A request holds a slot from ``submit`` until its task has ended *and* its consumer has closed
the stream (whichever comes last), so that the events a slow client has not read yet count
against ``max_inflight`` too. When every slot is taken, ``submit`` raises ``Overloaded`` (HTTP
503 with ``Retry-After``) instead of queueing without bound.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectSendStream

from altoflow._errors import Overloaded, StageError, format_exception
from altoflow._logging import log_stage_failure, new_request_id
from altoflow._result import Event
from altoflow.compiler import CompiledPipeline, load_target
from altoflow.runtime.local import ensure_instances, execute
from altoflow.runtime.metrics import ServerMetrics
from altoflow.runtime.timeline import Recording, TimelineRecorder, plan_replicas, timeline_json
from altoflow.runtime.partials import PartialBuffer
from altoflow.runtime.stream import RequestStream

logger = logging.getLogger("altoflow.server")


@runtime_checkable
class Ingress(Protocol):
    """What the HTTP layer needs from a runtime.

    ``async with ingress:`` starts it (``create_app`` does this in the app's lifespan) and stops
    it, cancelling the requests still running.
    """

    compiled: CompiledPipeline

    def submit(self, fields: dict[str, Any], *, request_id: str | None = None,
               partials: bool = True) -> RequestStream:
        """Start one request. Raises ``InputError`` for fields that do not fit the request
        schema (``compiled.validate_request``) and ``Overloaded`` when no slot is free.
        ``request_id`` (the HTTP layer's, from ``X-Request-Id``) names the request in the log
        records about it. ``partials=False``: the stream leaves out the stages' ``partial``
        events (they cost nothing more than the stage's ``altoflow.partial`` call)."""
        ...

    def health(self) -> dict[str, Any]:
        """``{"status": "ok" | "starting" | "stopping" | "stopped" | ..., "replicas":
        {stage: {"ready": int, "desired": int}}, ...}``; ``/healthz`` answers 200 only for ok."""
        ...

    def metrics(self) -> bytes:
        """Prometheus text exposition (version 0.0.4) of the families of
        ``altoflow.runtime.metrics.METRICS`` and the process collectors."""
        ...

    def timeline(self, request_id: str) -> dict[str, Any] | None:
        """The timeline of a recent request (``GET /v1/requests/{id}/timeline``), or None when
        none is kept for that id; ``timeline_missing(request_id)`` then says why."""
        ...

    def stages(self) -> list[dict[str, Any]]:
        """Each stage's replicas (``GET /v1/stages``): ``{"stage", "desired", "ready",
        "draining", "slots": [{"slot", "state"}]}``, a slot's state one of ``starting``,
        ``ready``, ``draining`` (a rescale removed it; it finishes what it holds) and
        ``stopping`` (drained, not gone yet)."""
        ...

    async def rescale(self, stage: str, replicas: int) -> dict[str, Any]:
        """Run ``stage`` on ``replicas`` replicas from now on; returns its entry of ``stages()``.
        ``ValueError`` for a count the stage cannot have, ``RescaleRefused`` when this runtime
        or its state cannot rescale."""
        ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc_info: object) -> Any: ...


class RescaleRefused(Exception):
    """The runtime cannot change a stage's replicas (now, or at all); the message says why."""


def stage_json(stage: str, desired: int, slots: list[Any]) -> dict[str, Any]:
    """A stage's entry of ``Ingress.stages``, from its slots (``core.SlotState``s)."""
    return {
        "stage": stage,
        "desired": desired,
        "ready": sum(1 for s in slots if s.state == "ready"),
        "draining": sum(1 for s in slots if s.state in ("draining", "stopping")),
        "slots": [{"slot": s.slot, "state": s.state} for s in slots],
    }


# -- a request's slot: a small state machine --------------------------------------------------
#
# The slot is free again once both the request's task has ended and its consumer has closed the
# stream; "cancelling" is a request whose consumer left while its task still runs.

SlotState = Literal["running", "cancelling", "ended", "released"]
SlotEvent = Literal["task_ended", "stream_closed"]

SLOT_TRANSITIONS: dict[tuple[SlotState, SlotEvent], SlotState] = {
    ("running", "task_ended"): "ended",
    ("running", "stream_closed"): "cancelling",
    ("cancelling", "task_ended"): "released",
    ("ended", "stream_closed"): "released",
}


def next_slot_state(state: SlotState, event: SlotEvent) -> SlotState:
    try:
        return SLOT_TRANSITIONS[state, event]
    except KeyError:
        raise RuntimeError(f"request slot in state {state!r} cannot handle {event!r}") from None


@dataclass
class _Request:
    id: int
    send: MemoryObjectSendStream[Event]
    scope: anyio.CancelScope
    started: float
    name: str  # its request id (X-Request-Id), for the log
    partials: PartialBuffer | None  # None: the client wants no partial events
    state: SlotState = "running"


class LocalIngress:
    """Runs each request on the in-process reference executor (``altoflow.runtime.local``).

    One task per request, in a task group that lives as long as the ``async with`` block. Every
    request gets its own executor, so a stage's ``replicas`` and ``concurrency`` hold per request,
    not across requests; ``max_inflight`` bounds how many requests run (and hold unread events)
    at once. Class stages are instantiated once, on entry, and shared by every request.

    Its metrics mean what the served runtime's do: the stage gauges add up what the executors of
    the running requests hold (invocations queued for a credit, or running), and a stage's live
    replicas are its declared ``replicas`` while the ingress runs, as ``health()`` reports them.
    """

    def __init__(self, target: Any, *, max_inflight: int = 64, retry_after: int = 1,
                 timeline: TimelineRecorder | None = None) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {max_inflight}")
        self.compiled: CompiledPipeline = (
            target if isinstance(target, CompiledPipeline) else load_target(target).compiled
        )
        self.max_inflight = max_inflight
        self.retry_after = retry_after
        self.stats = ServerMetrics(self.compiled.plan.names,
                                   requests_in_flight=lambda: len(self._requests),
                                   replicas_live=self._replicas_live)
        self._state = "starting"
        self._tg: anyio.abc.TaskGroup | None = None
        self._requests: dict[int, _Request] = {}
        self._next_id = 0
        # The recent requests' timelines (runtime.timeline), as the served router keeps them.
        self.timelines = TimelineRecorder() if timeline is None else timeline
        self._replica_of = plan_replicas(self.compiled.plan)

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> LocalIngress:
        if self._tg is not None:
            raise RuntimeError("this LocalIngress is running already; enter it once")
        await ensure_instances(self.compiled)  # a class stage's __init__ may load a model
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg, self._state = tg, "ok"
        return self

    async def __aexit__(self, *exc_info: object) -> bool | None:
        assert self._tg is not None, "__aexit__ without __aenter__"
        self._state = "stopping"
        self._tg.cancel_scope.cancel()
        try:
            return await self._tg.__aexit__(*exc_info)
        finally:
            self._tg, self._state = None, "stopped"

    # -- requests ---------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._requests)

    def submit(self, fields: dict[str, Any], *, request_id: str | None = None,
               partials: bool = True) -> RequestStream:
        if self._tg is None:
            raise RuntimeError(
                f"LocalIngress is {self._state}: start it with `async with ingress:` (an app from "
                f"create_app(ingress) does so in its lifespan) before submitting requests"
            )
        values = self.compiled.validate_request(fields)
        if len(self._requests) >= self.max_inflight:
            self.stats.rejected += 1
            raise Overloaded(
                f"the server is busy: {len(self._requests)} requests in flight, the most it takes "
                f"(max_inflight={self.max_inflight}); retry in {self.retry_after} s",
                retry_after=self.retry_after,
            )
        rid, self._next_id = self._next_id, self._next_id + 1
        # Unbounded buffer: the executor keeps every output of the request anyway (for its
        # Result), so a bound here would save nothing; max_inflight is what bounds memory.
        # Partial events, which the executor does not keep, are bounded by req.partials.
        send, receive = anyio.create_memory_object_stream[Event](math.inf)
        req = _Request(rid, send, anyio.CancelScope(), anyio.current_time(),
                       request_id or new_request_id(), PartialBuffer() if partials else None)
        self._requests[rid] = req
        self.stats.admitted += 1
        self._tg.start_soon(self._serve, req, values, self.timelines.begin(rid, req.name),
                            name=f"altoflow request {rid}")
        return RequestStream(receive, lambda: self._stream_closed(req), rid, partials=req.partials)

    async def _serve(self, req: _Request, values: dict[str, Any], timeline: Recording | None) -> None:
        outcome = "cancelled"
        try:
            with req.scope:
                try:
                    await execute(self.compiled, values, on_event=lambda e: self._on_event(req, e),
                                  stats=self.stats, timeline=timeline, request_id=req.name)
                    outcome = "done"
                except StageError as exc:
                    outcome = "error"
                    traceback = exc.traceback
                    log_stage_failure(logger, req.name, exc.stage, exc.ancestry, exc.detail,
                                      traceback)
                    self._send(req, Event("error", exc.stage, exc.ancestry, error=exc.detail,
                                          exc_type=exc.exc_type, traceback=traceback))
                except Exception as exc:
                    # A fault of the runtime, not of a stage: end this request, keep serving.
                    logger.exception("request %s failed in the runtime", req.name,
                                     extra={"request_id": req.name})
                    outcome = "error"
                    self._send(req, Event("error", None, {}, error=f"internal error: "
                                          f"{format_exception(exc)}", exc_type=type(exc).__name__))
        finally:
            req.send.close()
            self.stats.finished(outcome, anyio.current_time() - req.started)
            self.timelines.end(req.id, outcome)
            self._advance(req, "task_ended")

    def _on_event(self, req: _Request, event: Event) -> None:
        if event.type in ("output", "done"):
            self._send(req, event)
        elif (event.type == "partial" and req.partials is not None
              and req.partials.offer(event)):  # merged or capped otherwise; None: not wanted
            self._send(req, event)
        # The executor's own error event is left out: _serve sends one built from the
        # StageError it raises next, whose ``detail`` is kept apart from the stage and ancestry.

    @staticmethod
    def _send(req: _Request, event: Event) -> None:
        try:
            req.send.send_nowait(event)
        except anyio.BrokenResourceError:
            pass  # the consumer has gone and the request is being cancelled: nobody to tell

    def _stream_closed(self, req: _Request) -> None:
        req.scope.cancel()
        self._advance(req, "stream_closed")

    def _advance(self, req: _Request, event: SlotEvent) -> None:
        req.state = next_slot_state(req.state, event)
        if req.state == "released":
            del self._requests[req.id]

    # -- observability ----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        live = self._replicas_live()
        return {
            "status": self._state,
            "runtime": "local",
            "in_flight": len(self._requests),
            "max_inflight": self.max_inflight,
            "replicas": {
                s.name: {"ready": live[s.name], "desired": s.replicas}
                for s in self.compiled.plan.stages
            },
        }

    def metrics(self) -> bytes:
        return self.stats.render()

    def timeline(self, request_id: str) -> dict[str, Any] | None:
        rec = self.timelines.get(request_id)
        return None if rec is None else timeline_json(rec, self.compiled.plan, self._replica_of)

    def timeline_missing(self, request_id: str) -> str:
        return self.timelines.missing(request_id)

    def stages(self) -> list[dict[str, Any]]:
        live = self._replicas_live()
        return [{"stage": s.name, "desired": s.replicas, "ready": live[s.name], "draining": 0,
                 "slots": [{"slot": i, "state": "ready" if live[s.name] else "starting"}
                           for i in range(s.replicas)]}
                for s in self.compiled.plan.stages]

    async def rescale(self, stage: str, replicas: int) -> dict[str, Any]:
        raise RescaleRefused(
            "this server runs each request on an in-process executor of its own "
            "(LocalIngress), with the pipeline's replica counts: it has no replicas to scale; "
            "serve the pipeline with `altoflow serve` (ServedIngress) to rescale it")

    def _replicas_live(self) -> dict[str, int]:
        ready = self._state == "ok"
        return {s.name: s.replicas if ready else 0 for s in self.compiled.plan.stages}

