"""The in-process reference executor: the definition of altoflow's semantics.

Every runtime is tested against this one. It runs a request in the calling process, on one
asyncio event loop (through anyio): async stages run concurrently, sync ones in worker threads,
and every item flows on the moment it is produced, so a fan-out item reaches its consumers
while the generator is still running.

It is a thin shell around the same two pieces the served runtime uses: the router core
(``core.RouterCore``: routing, joins, group completion by progress tracking, request endings)
and the stage runner (``runner.StageRunner``: invocations, retries, timeouts, ``on_error``,
fold state). Instead of sockets, instructions go straight to in-process runners, and values
stay Python objects. ``tests/oracle.py`` checks the whole against a naive evaluator that shares
no code with it.

The rules of the programming model, as they are implemented:

- each stage has ``replicas`` runners of ``concurrency`` invocations each;
- a failed invocation is retried ``retries`` times (a generator only while it has yielded
  nothing: items that have streamed on cannot be taken back), then handled by ``on_error``;
- ``on_error="fail"`` ends the request with ``StageError``; ``"drop"`` drops the item as if the
  stage returned ``DROP``, and a fan-out stage that fails opens no group;
- a group of an aggregate over level ``l`` exists for each item that entered the stage opening
  ``l`` and finished there; it emits once, when no work that could reach it is left (or earlier,
  when its operator says the answer is decided), and its identity when it stayed empty;
- a join fires for each ancestry of its deepest inputs once all inputs are there, and gives the
  ancestry up when an input can no longer arrive;
- a stage's ``altoflow.partial(delta)`` is a ``partial`` event for ``on_event`` only (``altoflow
  run --events`` prints it, ``LocalIngress`` streams it): no stage sees it, the ``Result`` does
  not keep it, and ``altoflow.run`` (which watches no events) drops it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

import anyio
import anyio.to_thread

from altoflow import _tracing
from altoflow._errors import StageError, format_exception, user_traceback
from altoflow._logging import REQUEST_ID, log_stage_failure
from altoflow._result import Event, Result, partial_event
from altoflow.compiler import CompiledPipeline, load_target
from altoflow.runtime.core import (
    Abort, Ack, Emit, Finish, Flush, FlushDone, Invoke, Open, Output, ReplicaUp, RouterCore, Submit,
)
from altoflow.runtime.runner import StageRunner
from altoflow.runtime import timeline as tl

if TYPE_CHECKING:  # prometheus_client is imported only by servers, not by `import altoflow`
    from altoflow.runtime.metrics import ServerMetrics

REQUEST = 0  # this executor runs one request per execution


class _Execution:
    def __init__(
        self,
        compiled: CompiledPipeline,
        fields: dict[str, Any],
        on_event: Callable[[Event], None] | None,
        stats: ServerMetrics | None = None,
        timeline: tl.Recording | None = None,
        trace: Any = None,
    ) -> None:
        self.plan = compiled.plan
        # Where each invocation starts and ends and each output appears (runtime.timeline);
        # replica ids are counted as timeline.plan_replicas expects.
        self.timeline = timeline
        # While tracing is on: the context of the request's span, the parent of stage spans.
        self.trace = trace
        self.replica_names: dict[int, str] = {}
        # No replica of its own can die: nothing is kept for a replay.
        self.core = RouterCore(self.plan, seed=0, replay_limit=0)
        self.on_event = on_event
        self.stats = stats
        self.events: list[Event] = []
        self.error: StageError | None = None
        self.done = anyio.Event()
        self.fields = fields
        self.runners: dict[int, StageRunner] = {}
        self._queue: deque[Any] = deque()  # core events waiting to be handled
        self._handling = False
        self.inbox: dict[int, deque[tuple[Invoke, float]]] = {}  # with the time of dispatch
        self.active: dict[int, int] = {}
        self.limit: dict[int, int] = {}
        rid = 0
        for sp in self.plan.stages:
            spec = compiled.specs[sp.name]
            fn = compiled.instances[sp.name].__call__ if spec.is_class else spec.obj
            # Partials go to whoever watches the events; with nobody watching (altoflow.run),
            # altoflow.partial() in a stage is a check and nothing more.
            partial = None if on_event is None else functools.partial(self._partial, sp.name, sp.levels_in)
            for slot in range(sp.replicas):
                self.runners[rid] = StageRunner(spec, sp, fn, functools.partial(self._output, rid, sp.name),
                                                partial=partial)
                self.replica_names[rid] = f"{sp.name}#{slot}"
                self._queue.append(ReplicaUp(rid, sp.name, slot, replay=False))
                self.inbox[rid], self.active[rid], self.limit[rid] = deque(), 0, sp.concurrency
                rid += 1

    async def run(self) -> None:
        if self.stats is not None:
            self.stats.cores.add(self.core)  # its queues count towards the server's gauges
        try:
            async with anyio.create_task_group() as tg:
                self.tg = tg
                self._queue.append(Submit(REQUEST, self.fields))
                self._handle()
                await self.done.wait()
                tg.cancel_scope.cancel()
        finally:
            if self.stats is not None:
                self.stats.cores.discard(self.core)

    # Events from runners go through one loop, so that no handler runs inside another.
    def _event(self, event: Any) -> None:
        self._queue.append(event)
        self._handle()

    def _output(self, rid: int, stage: str, anc: Any, value: Any) -> None:
        if self.stats is not None:
            self.stats.items[stage] += 1
        if self.timeline is not None:
            self.timeline.add(time.perf_counter(), tl.code(tl.OUTPUT, rid), anc)
        self._event(Output(rid, stage, anc, value))

    def _partial(self, stage: str, levels: list[str], anc: Any, delta: str) -> None:
        """A stage's ``altoflow.partial(delta)``: to ``on_event`` at once, not to the core (no
        stage gets it) and not into the result."""
        if self.error is None and not self.done.is_set():
            self.on_event(partial_event(stage, dict(zip(levels, anc[1:])), delta))  # type: ignore[misc]

    def _handle(self) -> None:
        if self._handling:
            return
        self._handling = True
        try:
            while self._queue:
                for ins in self.core.handle(self._queue.popleft()):
                    self._apply(ins)
        finally:
            self._handling = False

    def _apply(self, ins: Any) -> None:
        if isinstance(ins, Invoke):
            # One task per busy slot, reused while work is queued: spawning a task per
            # invocation costs more than most stages do.
            self.inbox[ins.replica].append((ins, time.perf_counter()))
            if self.active[ins.replica] < self.limit[ins.replica]:
                self.active[ins.replica] += 1
                self.tg.start_soon(self._drain, ins.replica)
        elif isinstance(ins, Emit):
            self._record(Event("output", ins.stage, ins.ancestry, ins.payload))
        elif isinstance(ins, Open):
            status, error = self.runners[ins.replica].open(ins.prefix)
            if status == "dropped" and error is not None:
                _log_drop(error)
            if status == "failed":
                self._queue.append(FlushDone(ins.replica, ins.stage, ins.prefix, status, error))
        elif isinstance(ins, Flush):
            if self.timeline is not None:
                self.timeline.add(time.perf_counter(), tl.code(tl.FLUSH, ins.replica), ins.prefix)
            status, error = self.runners[ins.replica].flush(ins.prefix, ins.opened)
            if self.timeline is not None:
                self.timeline.add(time.perf_counter(), tl.code(
                    tl.FLUSH_DONE, ins.replica, tl.STATUS_CODES[status]), ins.prefix)
            if status == "dropped" and error is not None:
                _log_drop(error)
            self._queue.append(FlushDone(ins.replica, ins.stage, ins.prefix, status, error))
        elif isinstance(ins, Abort):
            self.runners[ins.replica].abort(ins.request)
        elif isinstance(ins, Finish):
            if ins.error is not None and self.error is None:
                self.error = ins.error.to_stage_error()
                self._record(Event("error", ins.error.stage, ins.error.ancestry,
                                   error=ins.error.detail, exc_type=ins.error.exc_type))
            self.done.set()
        else:  # pragma: no cover - the core has no other instructions
            raise TypeError(ins)

    async def _drain(self, rid: int) -> None:
        inbox, runner = self.inbox[rid], self.runners[rid]
        try:
            while inbox:
                ins, dispatched = inbox.popleft()
                if self.timeline is not None:
                    self.timeline.add(time.perf_counter(), tl.code(tl.DISPATCH, rid), ins.ancestry)
                try:
                    if self.trace is None:
                        status, error = await runner.invoke(ins.ancestry, ins.args)
                    else:
                        status, error = await runner.invoke_traced(
                            ins.ancestry, ins.args, self.trace, self.replica_names[rid])
                except anyio.get_cancelled_exc_class():
                    # The request ended under it. A replica process would finish it and
                    # acknowledge it, so it counts here too: both servers count the same.
                    if self.stats is not None:
                        self.stats.acknowledged(ins.stage, False, time.perf_counter() - dispatched)
                    raise
                if self.timeline is not None:
                    self.timeline.add(time.perf_counter(), tl.code(
                        tl.ACK, rid, tl.STATUS_CODES[status]), ins.ancestry)
                if status == "dropped" and error is not None:
                    _log_drop(error)
                if self.stats is not None:
                    self.stats.acknowledged(ins.stage, status == "failed",
                                            time.perf_counter() - dispatched)
                self._event(Ack(rid, ins.stage, ins.ancestry, status, error))
        finally:
            self.active[rid] -= 1

    def _record(self, event: Event) -> None:
        if self.error is not None and event.type == "output":
            return
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)


async def ensure_instances(compiled: CompiledPipeline) -> None:
    """Create each class stage's instance once (``__init__`` may load a model: off the loop)."""
    for name, spec in compiled.specs.items():
        if spec.is_class and name not in compiled.instances:
            try:
                compiled.instances[name] = await anyio.to_thread.run_sync(spec.obj)
            except Exception as exc:
                err = StageError(name, {}, f"__init__ failed: {format_exception(exc)}",
                                 type(exc).__name__)
                raise err from exc


async def execute(
    compiled: CompiledPipeline,
    fields: dict[str, Any],
    *,
    on_event: Callable[[Event], None] | None = None,
    stats: ServerMetrics | None = None,
    timeline: tl.Recording | None = None,
    request_id: str | None = None,
) -> Result:
    """Run one request of a compiled pipeline in this process; ``on_event`` sees each event live,
    the stages' ``partial`` events included (which the ``Result`` leaves out).

    ``stats``, a server's metrics, counts the request's stage items, errors and invocation times,
    and sees its queues while it runs (``LocalIngress`` passes its own). ``timeline`` records
    when each invocation started and ended and each output appeared (``runtime.timeline``;
    ``altoflow run --timeline`` draws it); it is told the outcome when the request ends. While
    tracing is on (``altoflow._tracing``) the request has a span, a child of the current
    context, named by ``request_id`` (``REQUEST_ID`` when None), and every invocation a span
    under it.
    """
    values = compiled.validate_request(fields)
    await ensure_instances(compiled)
    span = None
    if _tracing.TRACER is not None:
        span = _tracing.start_request(compiled.plan.name, request_id or REQUEST_ID.get())
    ex = _Execution(compiled, values, on_event, stats, timeline,
                    trace=None if span is None else _tracing.context_of(span))
    outcome = "cancelled"
    try:
        await ex.run()
        outcome = "error" if ex.error is not None else "done" if ex.done.is_set() else "cancelled"
    finally:
        if timeline is not None:
            timeline.end(outcome)
        if span is not None:
            _tracing.end_request(span, outcome, ex.error)
    if ex.error is not None:
        raise ex.error
    if on_event is not None:
        on_event(Event("done"))
    return Result(ex.events, {s.name: s.levels_out for s in compiled.plan.outputs})


async def arun(target: Any, /, **fields: Any) -> Result:
    """``await arun(target, **fields)``: ``run`` for code that is already inside an event loop."""
    return await execute(load_target(target).compiled, fields)


def run(target: Any, /, **fields: Any) -> Result:
    """Run one request in this process and return its ``Result``.

    ``target`` is a ``Pipeline``, a module, or a target string (``"app.py"``,
    ``"app.py:name"``, ``"pkg.mod:name"``). Raises ``CompileError`` for an invalid pipeline,
    ``InputError`` for fields that do not fit its request schema, and ``StageError`` when a
    stage fails under ``on_error="fail"``.
    """
    compiled = load_target(target).compiled
    if _in_event_loop():
        raise RuntimeError(
            "altoflow.run() was called inside a running event loop; use "
            "`await altoflow.arun(target, **fields)` there instead."
        )
    return anyio.run(functools.partial(execute, compiled, fields))


def _in_event_loop() -> bool:
    """Whether this thread is running an asyncio or trio event loop (anyio runs on either).

    Asked of the loops themselves: anyio >= 4.16 no longer installs sniffio, and its own
    message for a nested ``anyio.run`` does not say what to do instead.
    """
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
            return True
        except RuntimeError:
            pass
    return False


logger = logging.getLogger("altoflow.local")


def _log_drop(error: Any) -> None:
    """A stage raised under ``on_error="drop"``: its item is dropped, and the failure logged
    (with the request's id when a server runs the request: ``REQUEST_ID``)."""
    log_stage_failure(logger, REQUEST_ID.get(), error.stage, error.ancestry, error.detail,
                      user_traceback(error.exception) if error.exception is not None else None,
                      dropped=True)
