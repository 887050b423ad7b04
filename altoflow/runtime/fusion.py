"""Fusion: a fan-out and the aggregate that folds its level, run as one invocation.

A fan-out stage ``A`` whose only consumer is an aggregate ``B`` folding exactly the level that
``A`` opens (the claim verifier's ``query_tokens`` and ``bm25``: a query's tokens, summed) puts
every item of one of ``B``'s groups out of one invocation of ``A``. When both run inline (in the
router's process), the replica of ``A`` folds its items into ``B`` itself, as ``B``'s replica
would, and sends on ``B``'s result for the group: the items never reach the router, which saves
the router's work for each of them (a dispatch, an acknowledgement and the progress accounting
of both; about half of the claim verifier's items). What a request gets is unchanged:

- ``B``'s function runs on every item of ``A``, with ``B``'s retries, ``timeout`` and
  ``on_error``, and the operator folds the results, as on ``B``'s replica; the group's result
  goes on when ``A``'s invocation has ended, as it does once the router flushes the group;
- a failure names the stage and the item it happened at (``B``'s, with the item's ancestry),
  a dropped item of ``B`` is logged as ``B``'s, and ``A``'s failure under ``on_error="drop"``
  leaves no group (no result), as the unfused runtime does;
- ``B`` keeps its replicas, which take no items while fused.

When ``A``'s items come from a fast sync generator and ``B``'s calls are short, an invocation
begins with no task (``FusedRunner.fan_out_now``, as ``StageRunner.fan_out_now``) and, when it
ends there, sends ``B``'s result at once; otherwise it goes on in tasks, as ``invoke`` does.

``fusable`` says which pairs qualify; ``FusedRunner`` runs them; the router attributes the
fused result to ``B`` (``Router.fuse``) and the core opens no group of ``B`` for ``A``'s items.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from altoflow import _tracing
from altoflow.compiler.plan import Plan
from altoflow.runtime.core import ErrorInfo, Status
from altoflow.runtime.progress import Ancestry
from altoflow.runtime.runner import Ended, Rest, StageRunner
from altoflow.wire import ErrorBody

Dropped = Callable[[int, ErrorInfo], None]  # (request, error)


def fusable(plan: Plan, inline: Iterable[str]) -> dict[str, str]:
    """The pairs that fuse, fan-out -> aggregate, among the ``inline`` stages (see the module's
    docstring); a fan-out with a ``timeout`` does not fuse (its time would include the fold's)."""
    inline = set(inline)
    pairs = {}
    for a in plan.stages:
        if (a.name not in inline or a.fanout is None or a.operator is not None or a.output
                or a.timeout is not None or len(a.consumers) != 1):
            continue
        b = plan.stage(a.consumers[0])
        if (b.name in inline and b.operator is not None and b.fanout is None
                and b.inputs == [a.name] and not b.fields and b.over == a.fanout
                and b.levels_in == a.levels_out and b.levels_out == a.levels_in):
            pairs[a.name] = b.name
    return pairs


@dataclass(frozen=True, slots=True)
class FusedErrorBody(ErrorBody):
    """A fused invocation's failure, with the stage and ancestry where it happened. It only
    travels in memory (fused stages are inline), so the wire format does not carry it."""

    stage: str = ""
    ancestry: dict[str, int] | None = None


class FusedRunner:
    """``A``'s runner with ``B`` folded in: what a ``Worker`` of ``A`` runs when ``A`` fuses
    into ``B``. ``B``'s runner emits its result for a group as ``B``'s output; ``dropped`` logs
    ``B``'s dropped items (the router logs the unfused ones)."""

    runs_now = False  # every invocation awaits the fold's calls

    def __init__(self, a: StageRunner, b: StageRunner, dropped: Dropped) -> None:
        self.a, self.b, self.dropped = a, b, dropped
        self.a.emit = self._take
        # Per invocation of A running (by its ancestry): the items waiting for B, and the
        # first failure of B's, which ends it.
        self._waiting: dict[Ancestry, deque[tuple[Ancestry, Any]]] = {}
        self._wake: dict[Ancestry, asyncio.Event] = {}
        self._failed: dict[Ancestry, ErrorInfo] = {}
        self._tasks: dict[Ancestry, asyncio.Task] = {}

    def _take(self, anc: Ancestry, value: Any) -> None:
        """An item of A: folded into B's group now when B's call is short and nothing waits
        before it, else queued for the invocation's fold loop."""
        prefix = anc[:-1]
        if prefix in self._failed:
            return
        waiting = self._waiting[prefix]
        if not waiting and self.b.runs_now:
            self._settle(prefix, self.b.invoke_now(anc, {self.a.plan.name: value}))
            return
        waiting.append((anc, value))
        self._wake[prefix].set()

    def _settle(self, prefix: Ancestry, outcome: tuple[Status, ErrorInfo | None]) -> None:
        status, error = outcome
        if status == "dropped" and error is not None:
            self.dropped(prefix[0], error)
        elif status == "failed" and prefix not in self._failed:
            self._failed[prefix] = error or ErrorInfo(self.b.plan.name, {}, "failed", None)
            task = self._tasks.get(prefix)
            if task is not None:
                task.cancel()  # B failed: A's invocation is over (its request fails)

    async def _fold_loop(self, prefix: Ancestry, done: asyncio.Future) -> None:
        waiting, wake = self._waiting[prefix], self._wake[prefix]
        while True:
            while waiting and prefix not in self._failed:
                anc, value = waiting.popleft()
                kwargs = {self.a.plan.name: value}
                if self.b.runs_now:
                    self._settle(prefix, self.b.invoke_now(anc, kwargs))
                else:
                    self._settle(prefix, await self.b.invoke(anc, kwargs))
            if done.done() or prefix in self._failed:
                return
            wake.clear()
            await wake.wait()

    async def invoke(self, anc: Ancestry, kwargs: dict[str, Any]) -> tuple[Status, ErrorInfo | None]:
        """Run A on one input with B folded in; B's result goes to B's ``emit``."""
        self._begin(anc)
        return await self._finish(anc, functools.partial(self.a.invoke, anc, kwargs))

    @property
    def fans_out_now(self) -> bool:
        """Whether the next invocation can begin with no task (``fan_out_now``): A's can, and
        B's calls run to their end at once."""
        return self.a.fans_out_now and self.b.runs_now

    def fan_out_now(self, anc: Ancestry, kwargs: dict[str, Any]) -> Ended | Rest:
        """``invoke`` begun with no task (``StageRunner.fan_out_now``), A's items folded into B as
        they come: when A ends here and no item waits for B, the group's result goes now and
        the outcome is returned; else a function whose coroutine does the rest, as ``invoke``."""
        self._begin(anc)
        try:
            outcome = self.a.fan_out_now(anc, kwargs)
        except BaseException:
            self._end(anc)
            raise
        if type(outcome) is tuple and not self._waiting[anc]:
            try:
                return self._result(anc, *outcome)
            finally:
                self._end(anc)
        return functools.partial(self._finish, anc, outcome)

    def _begin(self, anc: Ancestry) -> None:
        self._wake[anc] = asyncio.Event()
        self._waiting[anc] = deque()

    async def _finish(self, anc: Ancestry, a_work: Ended | Rest) -> Ended:
        """The invocation from A's work on: ``a_work`` is A's outcome when A has ended, else a
        function whose coroutine runs A (or the rest of it); B folds what A puts out meanwhile."""
        wake = self._wake[anc]
        if type(a_work) is tuple:
            a_task = asyncio.get_running_loop().create_future()
            a_task.set_result(a_work)
        else:
            a_task = asyncio.ensure_future(a_work())
            if anc in self._failed:
                a_task.cancel()  # B failed before A's task existed: A's invocation is over
        self._tasks[anc] = a_task
        folding = asyncio.ensure_future(self._fold_loop(anc, a_task))
        a_task.add_done_callback(lambda _: wake.set())
        try:
            try:
                status, error = await asyncio.shield(a_task)
            except asyncio.CancelledError:
                if anc not in self._failed:
                    raise  # the invocation itself was cancelled (its request ended)
                status, error = "failed", None
            await folding
            return self._result(anc, status, error)
        finally:
            a_task.cancel()
            folding.cancel()
            self._end(anc)

    def _result(self, anc: Ancestry, status: Status, error: ErrorInfo | None) -> Ended:
        """The invocation's outcome once A has ended and B has folded every item: B's group's
        result sent on when all went well."""
        failed = self._failed.get(anc)
        if failed is not None:
            return "failed", failed
        if status != "ok":
            return status, error  # A failed or was dropped: its group is not opened
        for step in (self.b.open, lambda p: self.b.flush(p, opened=True)):
            try:
                status, error = step(anc)
            except Exception as exc:  # its result cannot be sent on (the codec refused it)
                return "failed", ErrorInfo(
                    self.b.plan.name, dict(zip(self.b.plan.route_key or [], anc[1:])),
                    f"cannot send the group's result: {exc}", type(exc).__name__)
            if status == "failed":
                return status, error
        return "ok", None

    def _end(self, anc: Ancestry) -> None:
        self.b.groups.pop(anc, None)
        for table in (self._waiting, self._wake, self._failed, self._tasks):
            table.pop(anc, None)

    async def invoke_traced(self, anc: Ancestry, kwargs: dict[str, Any], parent: Any,
                            replica: str) -> tuple[Status, ErrorInfo | None]:
        """``invoke`` inside a ``stage`` span of ``A`` (``StageRunner.invoke_traced``); its one
        output, when it ends well, is ``B``'s result for the group."""
        plan = self.a.plan
        span = _tracing.start_stage(parent, plan.name, replica, plan.levels_in, anc, len(plan.inputs))
        token = _tracing.attach(_tracing.context_of(span))
        status: Status = "cancelled"  # type: ignore[assignment]
        error: ErrorInfo | None = None
        try:
            status, error = await self.invoke(anc, kwargs)
            return status, error
        finally:
            _tracing.detach(token)
            _tracing.end_stage(span, status, error, 1 if status == "ok" else 0)

    def invoke_now(self, anc: Ancestry, kwargs: dict[str, Any]) -> tuple[Status, ErrorInfo | None]:
        raise RuntimeError("a fused invocation always awaits; check runs_now first")

    def open(self, prefix: Ancestry) -> tuple[Status, ErrorInfo | None]:
        raise RuntimeError(f"stage {self.a.plan.name!r} is a fan-out: it has no groups")

    flush = open

    def abort(self, request: int) -> None:
        self.a.abort(request)
        self.b.abort(request)
