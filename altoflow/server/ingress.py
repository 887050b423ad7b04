"""Where requests enter a running pipeline: the ``Ingress`` interface, and ``LocalIngress``.

The HTTP layer (``altoflow.server.http``) knows nothing of routers, workers or executors: it
talks to one object that follows ``Ingress``. ``LocalIngress`` runs each request on the
in-process reference executor; the router's ingress runs it on worker processes. Both hand out
the same ``RequestStream`` of ``altoflow.Event``: outputs as they happen, then exactly one
``done`` or ``error`` event, unless the request was cancelled first.

A request holds a slot from ``submit`` until its task has ended *and* its consumer has closed
the stream (whichever comes last), so that the events a slow client has not read yet count
against ``max_inflight`` too. When every slot is taken, ``submit`` raises ``Overloaded`` (HTTP
503 with ``Retry-After``) instead of queueing without bound.

The end of this module renders Prometheus' text exposition format (version 0.0.4) from plain
counters and histograms, for every ingress to share.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectSendStream

from altoflow._errors import StageError, format_exception
from altoflow._result import Event
from altoflow.compiler import CompiledPipeline, load_target
from altoflow.runtime.local import ensure_instances, execute

logger = logging.getLogger("altoflow.server")


class Overloaded(Exception):
    """Every request slot is taken; try again after ``retry_after`` seconds (HTTP 503)."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@runtime_checkable
class Ingress(Protocol):
    """What the HTTP layer needs from a runtime.

    ``async with ingress:`` starts it (``create_app`` does this in the app's lifespan) and stops
    it, cancelling the requests still running.
    """

    compiled: CompiledPipeline

    def submit(self, fields: dict[str, Any]) -> RequestStream:
        """Start one request. Raises ``InputError`` for fields that do not fit the request
        schema (``compiled.validate_request``) and ``Overloaded`` when no slot is free."""
        ...

    def health(self) -> dict[str, Any]:
        """``{"status": "ok" | "starting" | "stopping" | "stopped" | ..., "replicas":
        {stage: {"ready": int, "desired": int}}, ...}``; ``/healthz`` answers 200 only for ok."""
        ...

    def metrics(self) -> str:
        """Prometheus text exposition (version 0.0.4)."""
        ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc_info: object) -> Any: ...


class EventSource(Protocol):
    """The consumer's side of a request's event buffer, as ``RequestStream`` reads it.

    anyio's ``MemoryObjectReceiveStream`` is one; ``EventChannel`` is a cheaper one for
    ingresses that live on an asyncio loop. ``receive_nowait`` raises ``anyio.WouldBlock`` when
    nothing is buffered, and both raise ``anyio.EndOfStream`` once the producer has ended it.
    """

    def receive_nowait(self) -> Event: ...

    async def receive(self) -> Event: ...

    def close(self) -> None: ...


class EventChannel:
    """An unbounded buffer of one request's events; producer and consumer share one asyncio loop.

    The router fills it from its protocol callbacks (``send_nowait``, then ``end``) and the
    request's consumer reads it through ``RequestStream``. Unlike an anyio memory stream it takes
    no checkpoint for an event that is already buffered: a request's events usually arrive
    together (an output and the done), and a loop turn per event was a third of the router's
    cost per request (docs/benchmarks-router.md). ``RequestStream`` still yields to the loop every
    ``RequestStream.YIELD_EVERY`` events, so a long buffered stream cannot starve other tasks.
    """

    __slots__ = ("_closed", "_ended", "_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[Event] = deque()
        self._ended = False  # the producer is done: EndOfStream once the buffer is empty
        self._closed = False  # the consumer is gone: events are dropped
        self._waiter: asyncio.Future[None] | None = None

    def send_nowait(self, event: Event) -> None:
        if self._closed:
            return  # the consumer left; the router cancels the request on that same call
        if self._ended:
            raise anyio.ClosedResourceError("send_nowait after end()")
        self._items.append(event)
        self._wake()

    def end(self) -> None:
        """No more events: the consumer gets those buffered, then ``EndOfStream``."""
        self._ended = True
        self._wake()

    def close(self) -> None:
        """The consumer's close: buffered and later events are dropped."""
        self._closed = True
        self._items.clear()
        self._wake()

    def receive_nowait(self) -> Event:
        if self._items:
            return self._items.popleft()
        if self._closed:
            raise anyio.ClosedResourceError
        if self._ended:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    async def receive(self) -> Event:
        """The next event; a checkpoint, as anyio's ``receive`` is (``receive_nowait`` is not)."""
        if self._items or self._ended or self._closed:
            await asyncio.sleep(0)
        while True:
            try:
                return self.receive_nowait()
            except anyio.WouldBlock:
                pass
            if self._waiter is not None:
                raise anyio.BusyResourceError("receiving")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class RequestStream:
    """The events of one request, as an async iterator; ``await stream.aclose()`` cancels it.

    Reading it to its end closes it too.

    An ingress feeds ``receive`` (an anyio memory stream, or an ``EventChannel``) and learns of
    the close through ``on_close``, called once, synchronously: closing works inside a cancelled
    scope too, which is where a server closes the stream of a client that went away. An event
    that is already buffered is returned without a checkpoint, but at least every
    ``YIELD_EVERY`` events the reader passes through one, so that it can be cancelled and other
    tasks get to run.
    """

    YIELD_EVERY = 32

    def __init__(self, receive: EventSource, on_close: Callable[[], None], request_id: int) -> None:
        self.request_id = request_id
        self._receive = receive
        self._on_close: Callable[[], None] | None = on_close
        self._unyielded = 0

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> Event:
        try:
            if self._unyielded < self.YIELD_EVERY:
                try:
                    event = self._receive.receive_nowait()
                except anyio.WouldBlock:
                    pass
                else:
                    self._unyielded += 1
                    return event
            self._unyielded = 0
            return await self._receive.receive()  # a checkpoint
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self.close()  # read to the end: the same as closing it
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Stop reading and cancel the request if it still runs (idempotent)."""
        self._receive.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


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
    state: SlotState = "running"


class LocalIngress:
    """Runs each request on the in-process reference executor (``altoflow.runtime.local``).

    One task per request, in a task group that lives as long as the ``async with`` block. Every
    request gets its own executor, so a stage's ``replicas`` and ``concurrency`` hold per request,
    not across requests; ``max_inflight`` bounds how many requests run (and hold unread events)
    at once. Class stages are instantiated once, on entry, and shared by every request.
    """

    def __init__(self, target: Any, *, max_inflight: int = 64, retry_after: int = 1) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {max_inflight}")
        self.compiled: CompiledPipeline = (
            target if isinstance(target, CompiledPipeline) else load_target(target).compiled
        )
        self.max_inflight = max_inflight
        self.retry_after = retry_after
        self.stats = LocalStats(self.compiled)
        self._state = "starting"
        self._tg: anyio.abc.TaskGroup | None = None
        self._requests: dict[int, _Request] = {}
        self._next_id = 0

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

    def submit(self, fields: dict[str, Any]) -> RequestStream:
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
        send, receive = anyio.create_memory_object_stream[Event](math.inf)
        req = _Request(rid, send, anyio.CancelScope(), anyio.current_time())
        self._requests[rid] = req
        self.stats.admitted += 1
        self._tg.start_soon(self._serve, req, values, name=f"altoflow request {rid}")
        return RequestStream(receive, lambda: self._stream_closed(req), rid)

    async def _serve(self, req: _Request, values: dict[str, Any]) -> None:
        outcome = "cancelled"
        try:
            with req.scope:
                try:
                    await execute(self.compiled, values, on_event=lambda e: self._on_event(req, e))
                    outcome = "done"
                except StageError as exc:
                    outcome = "error"
                    self.stats.stage_errors[exc.stage] += 1
                    self._send(req, Event("error", exc.stage, exc.ancestry, error=exc.detail,
                                          exc_type=exc.exc_type))
                except Exception as exc:
                    # A fault of the runtime, not of a stage: end this request, keep serving.
                    logger.exception("request %d failed in the runtime", req.id)
                    outcome = "error"
                    self._send(req, Event("error", None, {}, error=f"internal error: "
                                          f"{format_exception(exc)}", exc_type=type(exc).__name__))
        finally:
            req.send.close()
            self.stats.finished(outcome, anyio.current_time() - req.started)
            self._advance(req, "task_ended")

    def _on_event(self, req: _Request, event: Event) -> None:
        if event.type == "output":
            self.stats.items[event.stage or ""] += 1
            self._send(req, event)
        elif event.type == "done":
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
        ready = self._state == "ok"
        return {
            "status": self._state,
            "runtime": "local",
            "in_flight": len(self._requests),
            "max_inflight": self.max_inflight,
            "replicas": {
                s.name: {"ready": s.replicas if ready else 0, "desired": s.replicas}
                for s in self.compiled.plan.stages
            },
        }

    def metrics(self) -> str:
        return render_metrics(self.stats.families(in_flight=len(self._requests)))


class LocalStats:
    """What ``LocalIngress`` can know: requests, output items per stage, errors, latency."""

    def __init__(self, compiled: CompiledPipeline) -> None:
        plan = compiled.plan
        self.admitted = 0
        self.rejected = 0
        self.outcomes: Counter[str] = Counter({"done": 0, "error": 0, "cancelled": 0})
        self.items: Counter[str] = Counter({s.name: 0 for s in plan.outputs})
        self.stage_errors: Counter[str] = Counter({s.name: 0 for s in plan.stages})
        self.latency = Histogram()

    def finished(self, outcome: str, seconds: float) -> None:
        self.outcomes[outcome] += 1
        if outcome != "cancelled":
            self.latency.observe(seconds)

    def families(self, in_flight: int) -> list[MetricFamily]:
        return [
            MetricFamily("altoflow_requests_in_flight", "gauge",
                         "Requests admitted and not yet finished streaming.", [("", {}, in_flight)]),
            MetricFamily("altoflow_requests_total", "counter",
                         "Requests admitted.", [("", {}, self.admitted)]),
            MetricFamily("altoflow_requests_finished_total", "counter",
                         "Requests that ended, by outcome (done, error, cancelled).",
                         [("", {"outcome": o}, n) for o, n in sorted(self.outcomes.items())]),
            MetricFamily("altoflow_requests_failed_total", "counter",
                         "Requests that ended with an error event.",
                         [("", {}, self.outcomes["error"])]),
            MetricFamily("altoflow_requests_rejected_total", "counter",
                         "Requests answered 503 because max_inflight requests were in flight.",
                         [("", {}, self.rejected)]),
            MetricFamily("altoflow_request_duration_seconds", "histogram",
                         "Time from admission to the done or error event.", self.latency.samples()),
            MetricFamily("altoflow_stage_output_items_total", "counter",
                         "Output items streamed, per output stage.",
                         [("", {"stage": s}, n) for s, n in self.items.items()]),
            MetricFamily("altoflow_stage_errors_total", "counter",
                         "Requests failed by a stage (on_error='fail'), per stage.",
                         [("", {"stage": s}, n) for s, n in self.stage_errors.items()]),
        ]


# -- Prometheus text exposition, version 0.0.4 -----------------------------------------------

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Sample = tuple[str, dict[str, str], float]  # (name suffix, labels, value)


class Histogram:
    """A cumulative-bucket histogram, rendered as ``_bucket``/``_sum``/``_count`` samples."""

    def __init__(self, buckets: Iterable[float] = DEFAULT_BUCKETS) -> None:
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def samples(self, labels: dict[str, str] | None = None) -> list[Sample]:
        labels = labels or {}
        out: list[Sample] = []
        total = 0
        for bound, n in zip([*self.bounds, math.inf], self.counts):
            total += n
            out.append(("_bucket", {**labels, "le": _number(bound)}, total))
        out.append(("_sum", labels, self.sum))
        out.append(("_count", labels, self.count))
        return out


@dataclass
class MetricFamily:
    name: str
    type: Literal["counter", "gauge", "histogram"]
    help: str
    samples: list[Sample] = field(default_factory=list)


def render_metrics(families: Iterable[MetricFamily]) -> str:
    lines: list[str] = []
    for fam in families:
        lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for suffix, labels, value in fam.samples:
            text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
            lines.append(f"{fam.name}{suffix}{{{text}}} {_number(value)}" if text
                         else f"{fam.name}{suffix} {_number(value)}")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")
