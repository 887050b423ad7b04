"""The in-process reference executor: the definition of altoflow's semantics.

Every runtime is tested against this one. It runs one request on one asyncio event loop
(through anyio): async stages run concurrently, sync ones in worker threads, and every item
flows on the moment it is produced: a fan-out item reaches its consumers while the generator is
still running. Group completion, join give-up and request completion all come from the pure
progress tracker (``altoflow.runtime.progress``), exactly as in the served runtime.

Rules it implements (design section 4), in the order a reader may look for them:

- each stage has a queue and at most ``concurrency * replicas`` invocations in flight;
- a failed invocation is retried ``retries`` times (a generator only while it has yielded
  nothing: items that have streamed on cannot be taken back), then handled by ``on_error``;
- ``on_error="fail"`` ends the request with ``StageError``; ``"drop"`` drops the item as if the
  stage returned ``DROP``, and a fan-out stage that fails opens no group;
- a group of an aggregate over level ``l`` exists for each item that entered the stage opening
  ``l`` and finished there; it emits once, when no work that could reach it is left (or earlier,
  when its operator says the answer is decided), and its identity when it stayed empty;
- a join fires for each ancestry of its deepest inputs once all inputs are there, and gives the
  ancestry up when an input can no longer arrive.
"""

from __future__ import annotations

import functools
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import anyio
import anyio.to_thread

from altoflow._errors import StageError, format_exception
from altoflow._result import Event, Result
from altoflow._stage import DROP, StageSpec
from altoflow.compiler import CompiledPipeline, load_target
from altoflow.compiler.plan import StagePlan
from altoflow.runtime.progress import Ancestry, Progress, RequestIdle, Topology, Unreachable

REQUEST = 0  # the request id in every ancestry of this executor: one request per execution
_END = object()


class _Dropped(Exception):
    """Internal: the current item is dropped (on_error='drop', or the request already failed)."""


@dataclass
class _Group:
    state: Any
    opened: bool = False  # the item that opens it finished in its fan-out stage
    emitted: bool = False


@dataclass
class _JoinState:
    pending: dict[Ancestry, dict[str, Any]] = field(default_factory=dict)
    values: dict[tuple[str, Ancestry], Any] = field(default_factory=dict)  # broadcast values
    waiting: dict[tuple[str, Ancestry], set[Ancestry]] = field(default_factory=lambda: defaultdict(set))


@dataclass
class _Stage:
    plan: StagePlan
    spec: StageSpec
    fn: Callable[..., Any]
    in_loc: int
    fold_loc: int | None
    field_args: dict[str, Any]
    consumers: list["_Stage"] = field(default_factory=list)
    depth_of: dict[str, int] = field(default_factory=dict)  # input -> its stack depth
    queue: deque = field(default_factory=deque)
    active: int = 0
    groups: dict[Ancestry, _Group] = field(default_factory=dict)
    join: _JoinState | None = None

    @property
    def limit(self) -> int:
        return self.plan.concurrency * self.plan.replicas


class _Execution:
    def __init__(
        self,
        compiled: CompiledPipeline,
        fields: dict[str, Any],
        on_event: Callable[[Event], None] | None,
    ) -> None:
        plan = compiled.plan
        topo = Topology.from_plan(plan)
        self.progress = Progress(topo)
        self.events: list[Event] = []
        self.on_event = on_event
        self.error: StageError | None = None
        self.done = anyio.Event()
        self._fired: deque[Unreachable | RequestIdle] = deque()
        self._watchers: dict[tuple[int, Ancestry], list[Callable[[], None]]] = {}
        self._pumping = False
        self.stages: dict[str, _Stage] = {}
        for sp in plan.stages:
            spec = compiled.specs[sp.name]
            fn = compiled.instances[sp.name].__call__ if spec.is_class else spec.obj
            self.stages[sp.name] = _Stage(
                plan=sp,
                spec=spec,
                fn=fn,
                in_loc=topo.in_loc[sp.name],
                fold_loc=topo.fold_loc.get(sp.name),
                field_args={f: fields[f] for f in sp.fields},
                join=_JoinState() if len(sp.inputs) > 1 else None,
            )
        for st in self.stages.values():
            st.consumers = [self.stages[c] for c in st.plan.consumers]
            st.depth_of = {i: len(plan.stage(i).levels_out) for i in st.plan.inputs}
        self.out_loc = topo.out_loc
        self.aggregates_over: dict[str, list[_Stage]] = defaultdict(list)
        for st in self.stages.values():
            if st.plan.over is not None:
                self.aggregates_over[st.plan.over].append(st)

    # -- driving ---------------------------------------------------------------------------

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self.tg = tg
            for st in self.stages.values():
                if not st.plan.inputs:
                    self._submit(st, (REQUEST,), {})
            await self.done.wait()

    def _submit(self, st: _Stage, anc: Ancestry, kwargs: dict[str, Any]) -> None:
        if self.error is not None:
            return
        self.progress.hold(st.in_loc, anc)
        st.queue.append((anc, kwargs))
        if st.active < st.limit:
            st.active += 1
            self.tg.start_soon(self._drain, st)

    async def _drain(self, st: _Stage) -> None:
        try:
            while st.queue:
                anc, kwargs = st.queue.popleft()
                try:
                    await self._invoke(st, anc, {**st.field_args, **kwargs})
                finally:
                    self._release(st.in_loc, anc)
        finally:
            st.active -= 1

    async def _invoke(self, st: _Stage, anc: Ancestry, kwargs: dict[str, Any]) -> None:
        try:
            if st.spec.is_generator:
                await self._fan_out(st, anc, kwargs)
                if st.plan.fanout is not None:
                    self._open_groups(st.plan.fanout, anc)
                return
            value = await self._attempts(st, anc, kwargs)
            if value is DROP:
                return
            if st.plan.operator is not None:
                self._fold(st, anc, value)
            else:
                self._emit(st, anc, value)
        except _Dropped:
            pass

    async def _attempts(self, st: _Stage, anc: Ancestry, kwargs: dict[str, Any]) -> Any:
        error: Exception | None = None
        for _ in range(st.plan.retries + 1):
            try:
                with anyio.fail_after(st.plan.timeout):
                    if st.spec.is_async:
                        return await st.fn(**kwargs)
                    return await anyio.to_thread.run_sync(
                        functools.partial(st.fn, **kwargs), abandon_on_cancel=True
                    )
            except Exception as exc:
                error = exc
        assert error is not None
        self._fail(st, anc, error)

    async def _fan_out(self, st: _Stage, anc: Ancestry, kwargs: dict[str, Any]) -> None:
        index = 0
        error: Exception | None = None
        for _ in range(st.plan.retries + 1):
            try:
                with anyio.fail_after(st.plan.timeout):
                    if st.spec.is_async:
                        agen = st.fn(**kwargs)
                        try:
                            async for value in agen:
                                index = self._yielded(st, anc, index, value)
                        finally:
                            await agen.aclose()
                    else:
                        gen = st.fn(**kwargs)
                        try:
                            while (value := await anyio.to_thread.run_sync(
                                _next, gen, abandon_on_cancel=True)) is not _END:
                                index = self._yielded(st, anc, index, value)
                        finally:
                            _close(gen)
                return
            except Exception as exc:
                error = exc
                if index:  # items have streamed on: a retry would yield them again
                    break
        assert error is not None
        self._fail(st, anc, error)

    def _yielded(self, st: _Stage, anc: Ancestry, index: int, value: Any) -> int:
        if value is DROP:  # a generator drops an element by not yielding it; DROP skips it too
            return index
        self._emit(st, anc + (index,), value)
        return index + 1

    def _fail(self, st: _Stage, anc: Ancestry, exc: Exception) -> None:
        """Handle a stage's failure on ``anc`` by its ``on_error``; always raises ``_Dropped``."""
        if st.plan.on_error == "fail" and self.error is None:
            ancestry = self._ancestry(st.plan.levels_in, anc) if len(anc) - 1 == len(
                st.plan.levels_in) else self._ancestry(st.plan.route_key or [], anc)
            err = StageError(st.plan.name, ancestry, format_exception(exc), type(exc).__name__)
            err.__cause__ = exc
            self.error = err
            self._event(Event("error", st.plan.name, ancestry, error=str(err),
                              exc_type=type(exc).__name__))
            self.tg.cancel_scope.cancel()
        raise _Dropped

    # -- items, joins, groups ----------------------------------------------------------------

    def _emit(self, st: _Stage, anc: Ancestry, value: Any) -> None:
        if self.error is not None:
            return
        if st.plan.output:
            self._event(Event("output", st.plan.name, self._ancestry(st.plan.levels_out, anc), value))
        for c in st.consumers:
            if c.join is None:
                self._submit(c, anc, {st.plan.name: value})
            else:
                self._arrive(c, st.plan.name, anc, value)

    def _arrive(self, c: _Stage, src: str, anc: Ancestry, value: Any) -> None:
        join = c.join
        assert join is not None
        if src in c.plan.drives:
            entry = join.pending.get(anc)
            if entry is None:
                entry = join.pending[anc] = {}
                self.progress.hold(c.in_loc, anc)  # the item waits in the join: work in flight
            entry[src] = value
            self._try_join(c, anc)
        else:
            join.values[(src, anc)] = value
            for waiting in sorted(join.waiting.pop((src, anc), ())):
                self._try_join(c, waiting)

    def _try_join(self, c: _Stage, anc: Ancestry) -> None:
        join = c.join
        assert join is not None
        entry = join.pending.get(anc)
        if entry is None:
            return
        missing = [(d, anc) for d in c.plan.drives if d not in entry]
        for b in c.plan.broadcasts:
            key = (b, anc[: 1 + c.depth_of[b]])
            if key in join.values:
                entry[b] = join.values[key]
            else:
                missing.append(key)
        if not missing:
            del join.pending[anc]
            self._submit(c, anc, entry)
            self._release(c.in_loc, anc)
            return
        for src, key in missing:
            join.waiting[(src, key)].add(anc)
            self._watch(self.out_loc[src], key, functools.partial(self._gone, c, src, key))

    def _gone(self, c: _Stage, src: str, key: Ancestry) -> None:
        """Input ``src`` of join ``c`` will never produce ``key``: drop who waits for it."""
        join = c.join
        assert join is not None
        if (src, key) in join.values:
            return
        for anc in sorted(join.waiting.pop((src, key), ())):
            entry = join.pending.get(anc)
            if entry is not None and src not in entry:
                del join.pending[anc]
                self._release(c.in_loc, anc)

    def _group(self, st: _Stage, prefix: Ancestry) -> _Group:
        group = st.groups.get(prefix)
        if group is None:
            assert st.spec.aggregate is not None
            group = st.groups[prefix] = _Group(st.spec.aggregate.create())
            self._watch(st.in_loc, prefix, functools.partial(self._close, st, prefix))
        return group

    def _fold(self, st: _Stage, anc: Ancestry, value: Any) -> None:
        op = st.spec.aggregate
        assert op is not None
        cut = 1 + len(st.plan.route_key or [])
        group = self._group(st, anc[:cut])
        if group.emitted:
            return
        try:
            group.state = op.add(group.state, value, anc[cut:])
            decided = group.opened and op.decided(group.state)
        except Exception as exc:
            self._fail(st, anc, exc)
        if decided:
            self._finish(st, anc[:cut], group)

    def _open_groups(self, level: str, prefix: Ancestry) -> None:
        """The item ``prefix`` finished in the stage opening ``level``: its groups exist."""
        for st in self.aggregates_over.get(level, ()):
            group = self._group(st, prefix)
            group.opened = True
            assert st.fold_loc is not None
            self.progress.hold(st.fold_loc, prefix)
            if st.spec.aggregate.decided(group.state):  # type: ignore[union-attr]
                self._finish(st, prefix, group)

    def _close(self, st: _Stage, prefix: Ancestry) -> None:
        group = st.groups.pop(prefix, None)
        if group is None or not group.opened:
            return  # never opened: its fan-out item was dropped, and so is the group
        if not group.emitted:
            self._finish(st, prefix, group)
        assert st.fold_loc is not None
        self._release(st.fold_loc, prefix)

    def _finish(self, st: _Stage, prefix: Ancestry, group: _Group) -> None:
        group.emitted = True
        op = st.spec.aggregate
        assert op is not None
        try:
            value = op.result(group.state)
            if st.plan.fanout is not None:
                try:
                    value = list(value)
                except TypeError:
                    raise TypeError(
                        f"aggregate {op!r} gave {type(value).__name__}, which cannot fan out "
                        f"on level '{st.plan.fanout}': fan-out of an aggregate needs a list"
                    ) from None
        except Exception as exc:
            try:
                self._fail(st, prefix, exc)
            except _Dropped:
                return
        if st.plan.fanout is None:
            self._emit(st, prefix, value)
            return
        for i, v in enumerate(value):
            self._emit(st, prefix + (i,), v)
        self._open_groups(st.plan.fanout, prefix)

    # -- progress --------------------------------------------------------------------------

    def _release(self, loc: int, anc: Ancestry) -> None:
        self._fired.extend(self.progress.release(loc, anc))
        self._pump()

    def _watch(self, target: int, prefix: Ancestry, callback: Callable[[], None]) -> None:
        self._watchers.setdefault((target, prefix), []).append(callback)
        if self.progress.watch(target, prefix):
            self._fired.append(Unreachable(target, prefix))
            self._pump()

    def _pump(self) -> None:
        # Callbacks release work and so fire more watches; run them from one loop, not nested.
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._fired:
                ev = self._fired.popleft()
                if isinstance(ev, RequestIdle):
                    self.done.set()
                    continue
                for callback in self._watchers.pop((ev.target, ev.prefix), ()):
                    callback()
        finally:
            self._pumping = False

    # -- output ----------------------------------------------------------------------------

    @staticmethod
    def _ancestry(levels: list[str], anc: Ancestry) -> dict[str, int]:
        return dict(zip(levels, anc[1:]))

    def _event(self, event: Event) -> None:
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)


def _next(gen: Any) -> Any:
    return next(gen, _END)


def _close(gen: Any) -> None:
    try:
        gen.close()
    except ValueError:  # still running in an abandoned thread (timeout): it ends on its own
        pass


async def _ensure_instances(compiled: CompiledPipeline) -> None:
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
) -> Result:
    """Run one request of a compiled pipeline in this process; ``on_event`` sees each event live."""
    values = compiled.validate_request(fields)
    await _ensure_instances(compiled)
    ex = _Execution(compiled, values, on_event)
    await ex.run()
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
    try:
        import sniffio

        sniffio.current_async_library()
    except Exception:
        pass
    else:
        raise RuntimeError(
            "altoflow.run() was called inside a running event loop; use "
            "`await altoflow.arun(target, **fields)` there instead."
        )
    return anyio.run(functools.partial(execute, compiled, fields))
