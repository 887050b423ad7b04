"""Running one stage on one replica: invocations, retries, timeouts, ``on_error``, fold state.

The same ``StageRunner`` serves the in-process executor and the worker processes of the served
runtime; only what ``emit`` does with an output differs (append an event, or write a frame).

A sync stage's calls run in anyio's worker threads, so that a slow one does not hold up the
event loop. A thread round trip costs a few hundred microseconds of latency and tens of CPU,
more than many calls take (a tokenizer, one BM25 term, a dict for a report), so the runner times
every sync call and runs the stage's calls on the loop's own thread once ``INLINE_AFTER`` calls
in a row took under ``INLINE_BELOW_S``; one inline call that takes longer sends the next calls
back to threads. A stage with a ``timeout`` always runs in threads (an inline call cannot be
abandoned), and an inline generator passes through a checkpoint every ``INLINE_YIELD_EVERY``
items, so a long one lets other tasks run.

An invocation whose calls run inline needs no task of its own: a served replica runs a sync map
to its end with ``invoke_now`` and begins a sync generator with ``fan_out_now``, which pulls its
items at once and returns its outcome, or, where ``invoke`` would have awaited (credit, a
checkpoint, a thread), returns the rest of the invocation for a task to run.

A fan-out may be paced (``pace``, which a served replica gives, see ``worker.py``): before
each item is pulled from the generator, ``pace(ancestry, items emitted so far)`` says whether
the invocation may go on (None) or must wait (an awaitable, done when the router has granted
more credit). A paused generator is not advanced at all: an LM stage stops generating.

Every invocation runs with its mark in ``altoflow._partial._CURRENT`` (the stage, the input's
ancestry and where partials go), so that ``altoflow.partial`` works in its code; ``partial``,
the runner's callback for them, is ``None`` where nobody watches them, and ``watched``, given
the request's id, says whether anybody watches that request's (an invocation of one that nobody
watches gets no sink, so its partials cost a check and are never made into frames).
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import anyio
import anyio.lowlevel
import anyio.to_thread

from altoflow import _tracing
from altoflow._errors import format_exception
from altoflow._partial import _CURRENT, Mark, PartialCallback, PartialSink
from altoflow._stage import DROP, StageSpec
from altoflow.compiler.plan import StagePlan
from altoflow.runtime.core import ErrorInfo, Status
from altoflow.runtime.progress import Ancestry

OutputCallback = Callable[[Ancestry, Any], None]
PaceCallback = Callable[[Ancestry, int], "Awaitable[None] | None"]
Ended = tuple[Status, ErrorInfo | None]  # how an invocation ended: its status, and its error if any
Rest = Callable[[], Awaitable[Ended]]  # the rest of an invocation begun at once, for a task
_END = object()

#: A sync call shorter than this counts as fast; see the module docstring.
INLINE_BELOW_S = 0.0005
#: Consecutive fast calls after which a sync stage's calls run on the event loop's thread.
INLINE_AFTER = 4
#: Items an inline sync generator yields between two checkpoints.
INLINE_YIELD_EVERY = 32


class _Failed(Exception):
    def __init__(self, status: Status, error: ErrorInfo | None) -> None:
        self.status = status
        self.error = error


@dataclass
class _Group:
    state: Any
    opened: bool = False
    emitted: bool = False


class StageRunner:
    """One replica's view of a stage. ``fn`` is the function (or the instance's ``__call__``)."""

    def __init__(self, spec: StageSpec, plan: StagePlan, fn: Callable[..., Any], emit: OutputCallback,
                 *, barrier: bool = False, pace: PaceCallback | None = None,
                 partial: PartialCallback | None = None,
                 watched: Callable[[int], bool] | None = None) -> None:
        self.spec = spec
        # Where the stage's altoflow.partial() deltas go: (ancestry, delta) on the loop's thread;
        # and, where the runner can tell, whether a request's client wants them at all (by its
        # id; None: every request's go): an invocation of one that does not gets no sink.
        self.partial = partial
        self.watched = watched
        self._sink: PartialSink | None = None
        self.name = plan.name
        # Barrier mode holds an invocation's outputs until it returns: the "wait for the whole
        # LM output" baseline that streaming is measured against. Nothing else changes (and
        # nothing is paced: the outputs that credit is granted for are held back).
        self.barrier = barrier
        self.pace = None if barrier else pace
        self.plan = plan
        self.fn = fn
        self.emit = emit
        self.op = spec.aggregate
        self.cut = 1 + len(plan.route_key or [])
        self.groups: dict[Ancestry, _Group] = {}
        # The common case, an async map with no retries, timeout, barrier or fold, skips the
        # general path's two extra coroutine frames (docs/benchmarks-router.md).
        self._plain = (spec.is_async and not spec.is_generator and self.op is None and not barrier
                       and plan.retries == 0 and plan.timeout is None)
        # Sync calls in a row that took under INLINE_BELOW_S; INLINE_AFTER of them and the
        # calls run inline. Threads update it too: a lost update only delays the switch.
        self.fast_calls = 0
        self._may_inline = not spec.is_async and plan.timeout is None
        # Sync calls running in threads now, counted by the threads themselves: a cancel (or a
        # timeout) abandons a thread's call but cannot stop it.
        self.threads_busy = 0
        self._threads_lock = threading.Lock()

    @property
    def inline(self) -> bool:
        """Whether the stage's next sync call runs on the event loop's thread."""
        return self._may_inline and self.fast_calls >= INLINE_AFTER

    def _in_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``_timed(fn, ...)``, run in a worker thread."""
        with self._threads_lock:
            self.threads_busy += 1
        try:
            return self._timed(fn, *args, **kwargs)
        finally:
            with self._threads_lock:
                self.threads_busy -= 1

    def _timed(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            if time.perf_counter() - start < INLINE_BELOW_S:
                self.fast_calls += 1
            else:
                self.fast_calls = 0

    # -- invocations ---------------------------------------------------------------------------

    def _mark(self, anc: Ancestry) -> Mark:
        if self._sink is None and self.partial is not None:
            self._sink = PartialSink(self.partial)  # on the loop, on first use: it notes the loop
        if self.watched is not None and not self.watched(anc[0]):
            return [self.name, anc, None]  # partial() checks and returns; LM.complete streams none
        return [self.name, anc, self._sink]

    async def invoke(self, anc: Ancestry, kwargs: dict[str, Any],
                     out: OutputCallback | None = None) -> tuple[Status, ErrorInfo | None]:
        """Run the stage on one input; outputs go to ``emit`` (or ``out``) the moment they exist."""
        if out is None:
            out = self.emit
        mark = self._mark(anc)
        token = _CURRENT.set(mark)
        try:
            if self._plain:
                try:
                    value = await self.fn(**kwargs)
                except Exception as exc:
                    failed = self._failure(self.plan.levels_in, anc, exc)
                    return failed.status, failed.error
                if value is DROP:
                    return "dropped", None
                out(anc, value)
                return "ok", None
            held: list[tuple[Ancestry, Any]] | None = [] if self.barrier else None
            emit = out if held is None else (lambda a, v: held.append((a, v)))
            try:
                if self.spec.is_generator:
                    await self._fan_out(anc, kwargs, emit)
                    return "ok", None
                return self._returned(anc, await self._attempts(anc, kwargs), emit), None
            except _Failed as failed:
                return failed.status, failed.error
            finally:
                for a, v in held or ():
                    out(a, v)
        finally:
            mark.clear()  # the invocation is over: a late partial() is refused
            _CURRENT.reset(token)

    async def invoke_traced(self, anc: Ancestry, kwargs: dict[str, Any], parent: Any,
                            replica: str) -> tuple[Status, ErrorInfo | None]:
        """``invoke`` inside a ``stage`` span, a child of the context ``parent`` (the request's
        span), which is the current span while the stage's code runs (``altoflow._tracing``)."""
        span = _tracing.start_stage(parent, self.plan.name, replica, self.plan.levels_in, anc,
                                    len(self.plan.inputs))
        emitted = 0
        emit = self.emit

        def counted(a: Ancestry, v: Any) -> None:
            nonlocal emitted
            emitted += 1
            emit(a, v)

        token = _tracing.attach(_tracing.context_of(span))
        status: str = "cancelled"
        error: ErrorInfo | None = None
        try:
            status, error = await self.invoke(anc, kwargs, counted)
            return status, error  # type: ignore[return-value]
        finally:
            _tracing.detach(token)
            _tracing.end_stage(span, status, error, emitted)

    @property
    def runs_now(self) -> bool:
        """Whether the next invocation can run to its end at once on the loop's thread
        (``invoke_now``): a sync function, not a generator, whose calls run inline."""
        return self._may_inline and self.fast_calls >= INLINE_AFTER and not self.spec.is_generator

    def invoke_now(self, anc: Ancestry, kwargs: dict[str, Any]) -> tuple[Status, ErrorInfo | None]:
        """``invoke`` with no task and no await, for when ``runs_now``: what it does is what
        ``invoke`` does then (its calls would run inline), a task's creation and steps saved."""
        held: list[tuple[Ancestry, Any]] | None = [] if self.barrier else None
        emit = self.emit if held is None else (lambda a, v: held.append((a, v)))
        mark = self._mark(anc)
        token = _CURRENT.set(mark)
        try:
            return self._returned(anc, self._attempts_now(anc, kwargs), emit), None
        except _Failed as failed:
            return failed.status, failed.error
        finally:
            mark.clear()  # the invocation is over: a late partial() is refused
            _CURRENT.reset(token)
            for a, v in held or ():
                self.emit(a, v)

    @property
    def fans_out_now(self) -> bool:
        """Whether the next invocation can start at once on the loop's thread (``fan_out_now``):
        a sync generator whose calls run inline, not in barrier mode."""
        return (self._may_inline and self.fast_calls >= INLINE_AFTER and self.spec.is_generator
                and not self.barrier)

    def fan_out_now(self, anc: Ancestry, kwargs: dict[str, Any]) -> Ended | Rest:
        """``invoke`` of a sync generator, for when ``fans_out_now``, begun with no task: its
        items are pulled here and now, as ``invoke``'s inline calls would pull them, and when
        it ends here its outcome is returned, a task's creation and steps saved. Where
        ``invoke`` would await (the pace says wait for credit, a checkpoint is due after
        ``INLINE_YIELD_EVERY`` items, or a slow call sends the next ones to threads), it returns
        a function instead, whose coroutine goes on with the same generator exactly as
        ``invoke`` would have: the caller runs it in a task, as it runs ``invoke``."""
        mark = self._mark(anc)
        token = _CURRENT.set(mark)
        emitted = [0]
        handed = False
        error: Exception | None = None
        try:
            attempts = self.plan.retries + 1
            while attempts:
                attempts -= 1
                gen = self.fn(**kwargs)
                try:
                    if self._pull_now(anc, gen, emitted):
                        return "ok", None
                    handed = True
                    return functools.partial(self._fan_out_rest, anc, kwargs, mark, emitted, gen,
                                             attempts + 1)
                except Exception as exc:
                    error = exc
                    if emitted[0]:  # items have streamed on: a retry would yield them again
                        break
                finally:
                    if not handed:
                        _close(gen)
            failed = self._failure(self.plan.levels_in, anc, error)
            return failed.status, failed.error
        finally:
            if not handed:
                mark.clear()  # the invocation is over: a late partial() is refused
            _CURRENT.reset(token)

    def _pull_now(self, anc: Ancestry, gen: Any, emitted: list[int]) -> bool:
        """Pull ``gen``'s items while nothing would await; True when it has ended."""
        pace, emit = self.pace, self.emit
        for _ in range(INLINE_YIELD_EVERY - 1):  # _generate's first checkpoint comes at the 32nd
            if (pace is not None and pace(anc, emitted[0]) is not None) or not self.inline:
                return False
            value = self._timed(_next, gen)
            if value is _END:
                return True
            emitted[0] = self._yielded(anc, emitted[0], value, emit)
        return False

    async def _fan_out_rest(self, anc: Ancestry, kwargs: dict[str, Any], mark: Mark,
                            emitted: list[int], gen: Any, attempts: int) -> Ended:
        """The rest of an invocation that ``fan_out_now`` began: ``invoke``'s, from where it was."""
        token = _CURRENT.set(mark)
        try:
            await self._fan_out(anc, kwargs, self.emit, emitted, gen, attempts)
            return "ok", None
        except _Failed as failed:
            return failed.status, failed.error
        finally:
            mark.clear()
            _CURRENT.reset(token)

    def _returned(self, anc: Ancestry, value: Any, emit: OutputCallback) -> Status:
        """What a map's (or an aggregate's) return value becomes: nothing, a fold, an output."""
        if value is DROP:
            return "dropped"
        if self.op is not None:
            self._fold(anc, value)
        else:
            emit(anc, value)
        return "ok"

    def _attempts_now(self, anc: Ancestry, kwargs: dict[str, Any]) -> Any:
        error: Exception | None = None
        for _ in range(self.plan.retries + 1):
            try:
                return self._timed(self.fn, **kwargs)
            except Exception as exc:
                error = exc
        raise self._failure(self.plan.levels_in, anc, error)

    async def _attempts(self, anc: Ancestry, kwargs: dict[str, Any]) -> Any:
        error: Exception | None = None
        for _ in range(self.plan.retries + 1):
            try:
                if self.plan.timeout is None:  # no cancel scope: it costs more than a call
                    return await self._call(kwargs)
                with anyio.fail_after(self.plan.timeout):
                    return await self._call(kwargs)
            except Exception as exc:
                error = exc
        raise self._failure(self.plan.levels_in, anc, error)

    async def _call(self, kwargs: dict[str, Any]) -> Any:
        if self.spec.is_async:
            return await self.fn(**kwargs)
        if self.inline:
            return self._timed(self.fn, **kwargs)
        return await anyio.to_thread.run_sync(
            functools.partial(self._in_thread, self.fn, **kwargs), abandon_on_cancel=True
        )

    async def _fan_out(self, anc: Ancestry, kwargs: dict[str, Any], emit: OutputCallback,
                       emitted: list[int] | None = None, gen: Any = None,
                       attempts: int | None = None) -> None:
        # `gen`, `emitted` and `attempts`: the attempt that fan_out_now began, to go on with.
        if emitted is None:
            emitted = [0]  # items emitted so far, kept across attempts and read after an error
        error: Exception | None = None
        for _ in range(self.plan.retries + 1 if attempts is None else attempts):
            try:
                if self.plan.timeout is None:  # no cancel scope: it costs more than a call
                    await self._generate(anc, kwargs, emit, emitted, gen)
                else:
                    with anyio.fail_after(self.plan.timeout):
                        await self._generate(anc, kwargs, emit, emitted, gen)
                return
            except Exception as exc:
                error = exc
                if emitted[0]:  # items have streamed on: a retry would yield them again
                    break
            gen = None
        raise self._failure(self.plan.levels_in, anc, error)

    async def _generate(self, anc: Ancestry, kwargs: dict[str, Any], emit: OutputCallback,
                        emitted: list[int], gen: Any = None) -> None:
        pace = self.pace
        if self.spec.is_async:
            agen = self.fn(**kwargs)
            try:
                if pace is None:
                    async for value in agen:
                        emitted[0] = self._yielded(anc, emitted[0], value, emit)
                    return
                while True:
                    waiter = pace(anc, emitted[0])
                    while waiter is not None:  # no credit left: pull nothing until there is
                        await waiter
                        waiter = pace(anc, emitted[0])
                    try:
                        value = await agen.__anext__()
                    except StopAsyncIteration:
                        break
                    emitted[0] = self._yielded(anc, emitted[0], value, emit)
            finally:
                await agen.aclose()
        else:
            if gen is None:
                gen = self.fn(**kwargs)
            try:
                n = 0
                while True:
                    if pace is not None:
                        waiter = pace(anc, emitted[0])
                        while waiter is not None:
                            await waiter
                            waiter = pace(anc, emitted[0])
                    if self.inline:
                        n += 1
                        if n % INLINE_YIELD_EVERY == 0:
                            await anyio.lowlevel.checkpoint()
                        value = self._timed(_next, gen)
                    else:
                        value = await anyio.to_thread.run_sync(
                            self._in_thread, _next, gen, abandon_on_cancel=True)
                    if value is _END:
                        break
                    emitted[0] = self._yielded(anc, emitted[0], value, emit)
            finally:
                _close(gen)

    def _yielded(self, anc: Ancestry, index: int, value: Any, emit: OutputCallback) -> int:
        if value is DROP:  # a generator drops an element by not yielding it; DROP skips it too
            return index
        emit(anc + (index,), value)
        return index + 1

    def _failure(self, levels: list[str], anc: Ancestry, exc: BaseException | None) -> _Failed:
        error = ErrorInfo(self.plan.name, dict(zip(levels, anc[1:])),
                          format_exception(exc) if exc else "failed", type(exc).__name__, exc)
        # Under on_error="drop" the item is dropped, and the error goes with the status only
        # so that the failure is logged (the core ignores the error of a dropped item).
        return _Failed("dropped" if self.plan.on_error == "drop" else "failed", error)

    # -- groups --------------------------------------------------------------------------------

    def _group(self, prefix: Ancestry) -> _Group:
        group = self.groups.get(prefix)
        if group is None:
            assert self.op is not None
            group = self.groups[prefix] = _Group(self.op.create())
        return group

    def _fold(self, anc: Ancestry, value: Any) -> None:
        assert self.op is not None
        group = self._group(anc[: self.cut])
        if group.emitted:
            return  # decided early: later values cannot change the result
        try:
            group.state = self.op.add(group.state, value, anc[self.cut:])
            decided = group.opened and self.op.decided(group.state)
        except Exception as exc:
            raise self._failure(self.plan.levels_in, anc, exc) from None
        if decided:
            self._finish(anc[: self.cut], group)

    def open(self, prefix: Ancestry) -> tuple[Status, ErrorInfo | None]:
        """The group exists (its fan-out item finished): it will emit, even if empty."""
        group = self._group(prefix)
        group.opened = True
        assert self.op is not None
        try:
            if not group.emitted and self.op.decided(group.state):
                self._finish(prefix, group)
        except _Failed as failed:
            return failed.status, failed.error
        return "ok", None

    def flush(self, prefix: Ancestry, opened: bool) -> tuple[Status, ErrorInfo | None]:
        """Nothing more can reach the group: emit its result, or discard it if never opened."""
        group = self.groups.pop(prefix, None)
        if not opened:
            return "dropped", None
        if group is None:
            assert self.op is not None
            group = _Group(self.op.create(), opened=True)
        if group.emitted:
            return "ok", None
        try:
            self._finish(prefix, group)
        except _Failed as failed:
            return failed.status, failed.error
        return "ok", None

    def _finish(self, prefix: Ancestry, group: _Group) -> None:
        assert self.op is not None
        group.emitted = True
        try:
            value = self.op.result(group.state)
            if self.plan.fanout is not None:
                try:
                    value = list(value)
                except TypeError:
                    raise TypeError(
                        f"aggregate {self.op!r} gave {type(value).__name__}, which cannot fan "
                        f"out on level '{self.plan.fanout}': fan-out of an aggregate needs a list"
                    ) from None
        except Exception as exc:
            raise self._failure(self.plan.route_key or [], prefix, exc) from None
        if self.plan.fanout is None:
            self.emit(prefix, value)
        else:
            for i, v in enumerate(value):
                self.emit(prefix + (i,), v)

    def abort(self, request: int) -> None:
        """Forget the request's groups (it failed or was cancelled)."""
        for prefix in [p for p in self.groups if p[0] == request]:
            del self.groups[prefix]


def _next(gen: Any) -> Any:
    return next(gen, _END)


def _close(gen: Any) -> None:
    try:
        gen.close()
    except ValueError:  # still running in an abandoned thread (timeout): it ends on its own
        pass
