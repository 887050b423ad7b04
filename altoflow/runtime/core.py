"""The router core: routing, joins, group completion and request lifetimes, as a state machine.

Events in, instructions out; no sockets, no asyncio, no clock (STYLE.md rule 1). The served
router and the in-process reference executor are both thin shells around one ``RouterCore``:
the router carries its instructions over sockets to worker processes, the executor to stage
runners in the same process. Payloads are opaque here (bytes in the router, Python objects in
the executor): the core stores and forwards them, it never looks inside.

What happens to one item, in the order the core sees it:

1. A replica reports ``Output(stage, ancestry, payload)``. If the stage is an output of the
   pipeline the core emits it to the client. For each consumer it either dispatches an
   invocation at once (one input) or files the payload in the consumer's join.
2. A join fires when all its inputs for an ancestry are there: the deepest inputs zipped by
   equal ancestry, shallower ones broadcast by prefix. It gives the ancestry up when progress
   tracking says an input can no longer arrive.
3. ``dispatch`` holds the work's pointstamp and sends ``Invoke`` to a replica: for an
   aggregate, the one its routing key hashes to (rendezvous hashing over replica slots); for
   any other stage, the less loaded of two random replicas with a free credit (power of two
   choices), else the stage's queue.
4. The replica reports ``Ack`` with the invocation's status. Its credit returns; a fan-out that
   finished ``ok`` opens the groups of the aggregates over its level (``Open`` to their keyed
   replicas). Then the pointstamp is released, and whatever progress tracking reports
   unreachable is acted on: a group is flushed (``Flush``), a join input given up.
5. A flushed group's replica reports the group's outputs and then ``FlushDone``; the request is
   finished (``Finish``) when nothing of it is in flight.

A failure under ``on_error="fail"`` finishes the request with the error at once, tells the
replicas to abort its work (``Abort``), and forgets everything about it.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Union

from altoflow._errors import StageError
from altoflow.compiler.plan import Plan, StagePlan
from altoflow.runtime.progress import Ancestry, Progress, RequestIdle, Topology, Unreachable

Status = Literal["ok", "dropped", "failed"]


# -- events in ---------------------------------------------------------------------------------
#
# Events and instructions are slotted dataclasses, not frozen ones: the router builds a few of
# them per item, and a frozen dataclass costs about 1.5 us to build against 0.35 us. Treat them
# as values all the same: nothing here changes one after it is made.


@dataclass(slots=True)
class Submit:
    """A new request with its (validated, encoded) fields."""

    request: int
    fields: dict[str, Any]


@dataclass(slots=True)
class Output:
    """A replica produced an item of ``stage`` (an invocation's result or a group's)."""

    replica: int
    stage: str
    ancestry: Ancestry
    payload: Any


@dataclass(slots=True)
class Ack:
    """A replica finished the invocation of ``stage`` on ``ancestry``."""

    replica: int
    stage: str
    ancestry: Ancestry
    status: Status
    error: "ErrorInfo | None" = None


@dataclass(slots=True)
class FlushDone:
    """A replica emitted (or, on failure, did not emit) a flushed group's result."""

    replica: int
    stage: str
    prefix: Ancestry
    status: Status
    error: "ErrorInfo | None" = None


@dataclass(slots=True)
class Cancel:
    """The client went away: drop the request."""

    request: int


@dataclass(slots=True)
class ReplicaUp:
    replica: int
    stage: str
    slot: int  # which of the stage's N replica slots (keys hash to slots)


@dataclass(slots=True)
class ReplicaDown:
    replica: int


Event = Union[Submit, Output, Ack, FlushDone, Cancel, ReplicaUp, ReplicaDown]


@dataclass(frozen=True)
class ErrorInfo:
    """What is known of a stage's failure: enough for ``StageError`` on the client side.

    ``exception`` is the exception object itself, known only in the process that raised it
    (the in-process executor uses it as the ``StageError``'s ``__cause__``); it never crosses
    a socket.
    """

    stage: str
    ancestry: dict[str, int]
    detail: str
    exc_type: str | None = None
    exception: BaseException | None = field(default=None, compare=False, repr=False)

    def to_stage_error(self) -> StageError:
        err = StageError(self.stage, self.ancestry, self.detail, self.exc_type)
        err.__cause__ = self.exception
        return err


# -- instructions out --------------------------------------------------------------------------


@dataclass(slots=True)
class Invoke:
    replica: int
    stage: str
    ancestry: Ancestry
    args: dict[str, Any]  # parameter -> payload (request fields included)


@dataclass(slots=True)
class Open:
    """The group ``prefix`` of aggregate ``stage`` exists: it will emit, even if empty."""

    replica: int
    stage: str
    prefix: Ancestry


@dataclass(slots=True)
class Flush:
    """Nothing more can reach the group: emit its result (``opened``) or discard its state."""

    replica: int
    stage: str
    prefix: Ancestry
    opened: bool


@dataclass(slots=True)
class Abort:
    """Drop everything of ``request`` (cancel its running invocations)."""

    replica: int
    request: int


@dataclass(slots=True)
class Emit:
    """An output item for the client."""

    request: int
    stage: str
    ancestry: dict[str, int]
    payload: Any


@dataclass(slots=True)
class Finish:
    """The request is over: done (``error`` None) or failed."""

    request: int
    error: ErrorInfo | None = None


Instruction = Union[Invoke, Open, Flush, Abort, Emit, Finish]


class CoreError(Exception):
    """An event that the core's state does not allow (a peer or shell bug, not the user's)."""


# -- state -------------------------------------------------------------------------------------

ReplicaState = Literal["ready", "dead"]


@dataclass
class _Replica:
    id: int
    stage: str
    slot: int
    credits: int
    state: ReplicaState = "ready"
    queue: deque = field(default_factory=deque)  # keyed work waiting for a credit
    inflight: dict[tuple[int, Ancestry], tuple[dict[str, Any], int]] = field(default_factory=dict)
    groups: set[Ancestry] = field(default_factory=set)  # keyed groups it holds state for


@dataclass
class _Join:
    pending: dict[Ancestry, dict[str, Any]] = field(default_factory=dict)
    values: dict[tuple[str, Ancestry], Any] = field(default_factory=dict)
    waiting: dict[tuple[str, Ancestry], set[Ancestry]] = field(default_factory=lambda: defaultdict(set))


class _Request:
    """One request's state in the core. A plain slotted class: one is built per request, and a
    dataclass with five default factories cost twice as much."""

    __slots__ = ("fields", "flushing", "id", "joins", "opened", "touched", "watchers")

    def __init__(self, id: int, fields: dict[str, Any]) -> None:
        self.id = id
        self.fields = fields
        self.joins: dict[str, _Join] = defaultdict(_Join)
        self.opened: set[tuple[str, Ancestry]] = set()
        self.touched: set[tuple[str, Ancestry]] = set()
        self.flushing: set[tuple[str, Ancestry]] = set()  # opened, flush sent
        self.watchers: dict[tuple[int, Ancestry], list[tuple]] = {}


# Allowed replica transitions (STYLE rule 3): a dead replica comes back as a new replica id.
_REPLICA_TRANSITIONS: dict[tuple[ReplicaState, str], ReplicaState] = {
    ("ready", "down"): "dead",
}


class CoreStatistics(NamedTuple):
    """Invocations per stage: ``queued`` wait for a replica's credit (in the stage's queue, a
    keyed replica's queue, or parked for a slot with no live replica); ``in_flight`` have been
    dispatched to a replica and not acknowledged yet."""

    queued: dict[str, int]
    in_flight: dict[str, int]


class RouterCore:
    """All routing and progress decisions of one router, for any number of requests."""

    def __init__(self, plan: Plan, *, seed: int | None = None) -> None:
        self.plan = plan
        self.topo = Topology.from_plan(plan)
        self.progress = Progress(self.topo)
        self.stages: dict[str, StagePlan] = {s.name: s for s in plan.stages}
        self.sources = [s.name for s in plan.stages if not s.inputs]
        self.aggregates_over: dict[str, list[str]] = defaultdict(list)
        for s in plan.stages:
            if s.over is not None:
                self.aggregates_over[s.over].append(s.name)
        self.depth_out = {s.name: len(s.levels_out) for s in plan.stages}
        self._in_cut = {s.name: 1 + len(s.levels_in) for s in plan.stages}  # an input's ancestry length
        self.replicas: dict[int, _Replica] = {}
        self.slots: dict[str, dict[int, int]] = {s.name: {} for s in plan.stages}  # slot -> id
        self.stage_queue: dict[str, deque] = {s.name: deque() for s in plan.stages}
        # Keyed work whose slot has no live replica, waiting for ReplicaUp: (stage, slot) -> queue
        self.parked: dict[tuple[str, int], deque] = {}
        self.requests: dict[int, _Request] = {}
        self._rng = random.Random(seed)
        self._out: list[Instruction] = []
        self._fired: deque = deque()
        self.log: deque[str] = deque(maxlen=200)  # a short story of recent decisions
        self._handlers = {
            Submit: self._on_Submit, Output: self._on_Output, Ack: self._on_Ack,
            FlushDone: self._on_FlushDone, Cancel: self._on_Cancel, ReplicaUp: self._on_ReplicaUp,
            ReplicaDown: self._on_ReplicaDown,
        }

    # -- the one entry point -------------------------------------------------------------------

    def handle(self, event: Event) -> list[Instruction]:
        out = self._out = []
        self._handlers[type(event)](event)
        if self._fired:
            self._pump()
        self._out = []
        return out

    # The router's per-frame entry points: ``handle(Output(...))`` and ``handle(Ack(...))``
    # without building the event (two of the ~70 us a request costs the router).

    def output(self, replica: int, stage: str, ancestry: Ancestry, payload: Any) -> list[Instruction]:
        out = self._out = []
        self._output(replica, stage, ancestry, payload)
        if self._fired:
            self._pump()
        self._out = []
        return out

    def ack(self, replica: int, stage: str, ancestry: Ancestry, status: Status,
            error: ErrorInfo | None = None) -> list[Instruction]:
        out = self._out = []
        self._ack_in(replica, stage, ancestry, status, error)
        if self._fired:
            self._pump()
        self._out = []
        return out

    def statistics(self) -> CoreStatistics:
        """What waits and what runs, per stage, now (for the metrics; it walks every queue)."""
        queued = {name: len(q) for name, q in self.stage_queue.items()}
        in_flight = dict.fromkeys(self.stages, 0)
        for rep in self.replicas.values():
            queued[rep.stage] += len(rep.queue)
            in_flight[rep.stage] += len(rep.inflight)
        for (name, _slot), parked in self.parked.items():
            queued[name] += sum(1 for entry in parked if entry[0] == "invoke")
        return CoreStatistics(queued, in_flight)

    # -- events --------------------------------------------------------------------------------

    def _on_ReplicaUp(self, ev: ReplicaUp) -> None:
        stage = self.stages[ev.stage]
        if ev.replica in self.replicas:
            raise CoreError(f"replica {ev.replica} announced twice")
        if not 0 <= ev.slot < stage.replicas:
            raise CoreError(f"stage {ev.stage} has {stage.replicas} replica slots, not {ev.slot + 1}")
        rep = _Replica(ev.replica, ev.stage, ev.slot, credits=stage.concurrency)
        self.replicas[ev.replica] = rep
        self.slots[ev.stage][ev.slot] = ev.replica
        # Keyed work that waited for this slot goes first, in the order it came.
        for entry in self.parked.pop((ev.stage, ev.slot), ()):
            if entry[0] == "send":
                if entry[1] in self.requests:
                    rep.groups.add(entry[2])
                    self._out.append(entry[3](rep.id))
            else:
                rep.queue.append(entry[1:])
        self._feed(rep)

    def _on_ReplicaDown(self, ev: ReplicaDown) -> None:
        rep = self.replicas.get(ev.replica)
        if rep is None or rep.state == "dead":
            return
        rep.state = _REPLICA_TRANSITIONS[(rep.state, "down")]
        if self.slots[rep.stage].get(rep.slot) == rep.id:
            del self.slots[rep.stage][rep.slot]
        stage = self.stages[rep.stage]
        # Aggregate state on it is gone: requests with a group there cannot complete.
        for prefix in sorted(rep.groups):
            if prefix[0] in self.requests:
                self._fail_request(prefix[0], ErrorInfo(
                    stage.name, self._named(stage.route_key or [], prefix),
                    f"the replica holding this group's aggregate state died (replica {rep.id})",
                    "ReplicaDied"))
        parked = self.parked.setdefault((rep.stage, rep.slot), deque())
        parked.extend(("invoke", anc, args) for anc, args in rep.queue)
        rep.queue.clear()
        inflight, rep.inflight = rep.inflight, {}
        for (req, anc), (args, outputs) in sorted(inflight.items(), key=lambda kv: kv[0]):
            if req not in self.requests:
                continue
            if outputs == 0 and stage.route_key is None:
                # Nothing of it reached anyone: run it again elsewhere, exactly once overall.
                self.log.append(f"redispatch {stage.name} {anc} from dead replica {rep.id}")
                self._route(stage, anc, args)
            else:
                self._ack(stage, anc, "failed" if stage.on_error == "fail" else "dropped",
                          ErrorInfo(stage.name, self._named(stage.levels_in, anc),
                                    f"replica {rep.id} died while running this item",
                                    "ReplicaDied"))
        # Keyed work for this slot now waits in `parked` for the slot's next replica.

    def _on_Submit(self, ev: Submit) -> None:
        if ev.request in self.requests:
            raise CoreError(f"request {ev.request} submitted twice")
        self.requests[ev.request] = _Request(ev.request, dict(ev.fields))
        for name in self.sources:
            self._dispatch(self.stages[name], (ev.request,), {})

    def _on_Cancel(self, ev: Cancel) -> None:
        if ev.request in self.requests:
            self._drop_request(ev.request)

    def _on_Output(self, ev: Output) -> None:
        self._output(ev.replica, ev.stage, ev.ancestry, ev.payload)

    def _output(self, replica: int, name: str, anc: Ancestry, payload: Any) -> None:
        if anc[0] not in self.requests:
            return  # the request ended (failed or cancelled): late output is dropped
        rep = self.replicas.get(replica)
        if rep is not None:
            key = (anc[0], anc[: self._in_cut[name]])
            running = rep.inflight.get(key)
            if running is not None:
                rep.inflight[key] = (running[0], running[1] + 1)
        self._emit(self.stages[name], anc, payload)

    def _on_Ack(self, ev: Ack) -> None:
        self._ack_in(ev.replica, ev.stage, ev.ancestry, ev.status, ev.error)

    def _ack_in(self, replica: int, name: str, anc: Ancestry, status: Status, error: ErrorInfo | None) -> None:
        rep = self.replicas.get(replica)
        if rep is None:
            raise CoreError(f"ack from unknown replica {replica}")
        if rep.inflight.pop((anc[0], anc), None) is None:
            return  # already settled (its replica was declared dead, or the request ended)
        rep.credits += 1
        if anc[0] in self.requests:
            self._ack(self.stages[name], anc, status, error)
        if rep.queue or self.stage_queue[rep.stage]:
            self._feed(rep)

    def _on_FlushDone(self, ev: FlushDone) -> None:
        rep = self.replicas.get(ev.replica)
        if rep is not None:
            rep.groups.discard(ev.prefix)
        req = self.requests.get(ev.prefix[0])
        if req is None:
            return
        if ev.status == "failed":
            # From a flush, or from an open whose group was decided at once and failed to emit.
            self._fail_request(ev.prefix[0], ev.error)
            return
        stage = self.stages[ev.stage]
        if (stage.name, ev.prefix) not in req.flushing:
            return  # the answer to a flush that discarded an unopened group
        req.flushing.discard((stage.name, ev.prefix))
        if ev.status == "ok" and stage.fanout is not None:
            self._open_groups(stage.fanout, ev.prefix)
        self._release(self.topo.fold_loc[stage.name], ev.prefix)

    # -- items, joins, groups ------------------------------------------------------------------

    def _ack(self, stage: StagePlan, anc: Ancestry, status: Status, error: ErrorInfo | None) -> None:
        if status == "failed":
            self._fail_request(anc[0], error)
            return
        if status == "ok" and stage.fanout is not None and stage.operator is None:
            self._open_groups(stage.fanout, anc)
        self._release(self.topo.in_loc[stage.name], anc)

    def _emit(self, stage: StagePlan, anc: Ancestry, payload: Any) -> None:
        req = anc[0]
        if stage.output:
            self._out.append(Emit(req, stage.name, self._named(stage.levels_out, anc), payload))
        for c in stage.consumers:
            consumer = self.stages[c]
            if len(consumer.inputs) == 1:
                self._dispatch(consumer, anc, {stage.name: payload})
            else:
                self._arrive(consumer, stage.name, anc, payload)

    def _arrive(self, c: StagePlan, src: str, anc: Ancestry, payload: Any) -> None:
        join = self.requests[anc[0]].joins[c.name]
        if src in c.drives:
            entry = join.pending.get(anc)
            if entry is None:
                entry = join.pending[anc] = {}
                self._hold(self.topo.in_loc[c.name], anc)  # waiting in the join
            entry[src] = payload
            self._try_join(c, anc)
        else:
            join.values[(src, anc)] = payload
            for waiting in sorted(join.waiting.pop((src, anc), ())):
                self._try_join(c, waiting)

    def _try_join(self, c: StagePlan, anc: Ancestry) -> None:
        req = self.requests.get(anc[0])
        if req is None:
            return
        join = req.joins[c.name]
        entry = join.pending.get(anc)
        if entry is None:
            return
        missing = [(d, anc) for d in c.drives if d not in entry]
        for b in c.broadcasts:
            key = (b, anc[: 1 + self.depth_out[b]])
            if key in join.values:
                entry[b] = join.values[key]
            else:
                missing.append(key)
        if not missing:
            del join.pending[anc]
            self._dispatch(c, anc, entry)
            self._release(self.topo.in_loc[c.name], anc)
            return
        for src, key in missing:
            join.waiting[(src, key)].add(anc)
            self._watch(self.topo.out_loc[src], key, ("gone", c.name, src))

    def _gone(self, c: StagePlan, src: str, key: Ancestry) -> None:
        req = self.requests.get(key[0])
        if req is None:
            return
        join = req.joins[c.name]
        if (src, key) in join.values:
            return
        for anc in sorted(join.waiting.pop((src, key), ())):
            entry = join.pending.get(anc)
            if entry is not None and src not in entry:
                del join.pending[anc]
                self._release(self.topo.in_loc[c.name], anc)

    def _open_groups(self, level: str, prefix: Ancestry) -> None:
        for name in self.aggregates_over.get(level, ()):
            req = self.requests.get(prefix[0])
            if req is None:
                return
            stage = self.stages[name]
            req.opened.add((name, prefix))
            self._hold(self.topo.fold_loc[name], prefix)
            self._watch(self.topo.in_loc[name], prefix, ("close", name))
            self._send_keyed(stage, prefix, lambda rid: Open(rid, name, prefix))

    def _close(self, stage: StagePlan, prefix: Ancestry) -> None:
        req = self.requests.get(prefix[0])
        if req is None:
            return
        key = (stage.name, prefix)
        opened = key in req.opened
        if opened or key in req.touched:
            req.opened.discard(key)
            req.touched.discard(key)
            if opened:
                req.flushing.add(key)
            self._send_keyed(stage, prefix, lambda rid: Flush(rid, stage.name, prefix, opened))
            if not opened:
                # A discard is not waited for: the request may end before its FlushDone comes.
                rid = self.slots[stage.name].get(self._slot(stage, prefix))
                if rid is not None:
                    self.replicas[rid].groups.discard(prefix)
        # An opened group keeps its fold pointstamp until the replica reports FlushDone.

    # -- dispatch and credits ------------------------------------------------------------------

    def _dispatch(self, stage: StagePlan, anc: Ancestry, args: dict[str, Any]) -> None:
        req = self.requests.get(anc[0])
        if req is None:
            return
        self._hold(self.topo.in_loc[stage.name], anc)
        if stage.fields:
            full = {f: req.fields[f] for f in stage.fields}
            full.update(args)
        else:
            full = args
        if stage.route_key is not None:
            prefix = anc[: 1 + len(stage.route_key)]
            if (stage.name, prefix) not in req.opened and (stage.name, prefix) not in req.touched:
                req.touched.add((stage.name, prefix))
                self._watch(self.topo.in_loc[stage.name], prefix, ("close", stage.name))
        self._route(stage, anc, full)

    def _route(self, stage: StagePlan, anc: Ancestry, args: dict[str, Any]) -> None:
        if stage.route_key is not None:
            prefix = anc[: 1 + len(stage.route_key)]
            slot = self._slot(stage, prefix)
            rid = self.slots[stage.name].get(slot)
            if rid is None:  # the slot's replica is (re)starting
                self.parked.setdefault((stage.name, slot), deque()).append(("invoke", anc, args))
                return
            rep = self.replicas[rid]
            rep.groups.add(prefix)
            if rep.credits > 0:
                self._invoke(rep, anc, args)
            else:
                rep.queue.append((anc, args))
            return
        rep = self._pick(stage)
        if rep is None:
            self.stage_queue[stage.name].append((anc, args))
        else:
            self._invoke(rep, anc, args)

    def _pick(self, stage: StagePlan) -> _Replica | None:
        slots = self.slots[stage.name]
        if len(slots) == 1:
            for r in slots.values():
                rep = self.replicas[r]
                return rep if rep.credits > 0 else None
        ready = [self.replicas[r] for r in slots.values() if self.replicas[r].credits > 0]
        if not ready:
            return None
        if len(ready) == 1:
            return ready[0]
        a, b = self._rng.sample(ready, 2)
        return a if len(a.inflight) <= len(b.inflight) else b

    def _invoke(self, rep: _Replica, anc: Ancestry, args: dict[str, Any]) -> None:
        rep.credits -= 1
        rep.inflight[(anc[0], anc)] = (args, 0)
        self._out.append(Invoke(rep.id, rep.stage, anc, args))

    def _feed(self, rep: _Replica) -> None:
        """Give a replica with free credits the work waiting for it."""
        while rep.credits > 0 and rep.state == "ready":
            queue = rep.queue if rep.queue else self.stage_queue[rep.stage]
            if not queue:
                return
            anc, args = queue.popleft()
            if anc[0] not in self.requests:
                continue
            self._invoke(rep, anc, args)

    def _send_keyed(self, stage: StagePlan, prefix: Ancestry, make: Any) -> None:
        slot = self._slot(stage, prefix)
        rid = self.slots[stage.name].get(slot)
        if rid is None:
            self.parked.setdefault((stage.name, slot), deque()).append(("send", prefix[0], prefix, make))
            return
        self.replicas[rid].groups.add(prefix)
        self._out.append(make(rid))

    def _slot(self, stage: StagePlan, prefix: Ancestry) -> int:
        """Rendezvous hashing: the slot with the highest hash of (stage, key, slot)."""
        key = repr((stage.name, prefix)).encode()
        return max(range(stage.replicas), key=lambda s: hashlib.blake2b(
            key + s.to_bytes(4, "little"), digest_size=8).digest())

    # -- progress ------------------------------------------------------------------------------

    def _hold(self, loc: int, anc: Ancestry) -> None:
        if anc[0] in self.requests:
            self.progress.hold(loc, anc)

    def _release(self, loc: int, anc: Ancestry) -> None:
        if anc[0] in self.requests:
            self._fired.extend(self.progress.release(loc, anc))

    def _watch(self, target: int, prefix: Ancestry, action: tuple) -> None:
        req = self.requests[prefix[0]]
        req.watchers.setdefault((target, prefix), []).append(action)
        if self.progress.watch(target, prefix):
            self._fired.append(Unreachable(target, prefix))

    def _pump(self) -> None:
        while self._fired:
            ev = self._fired.popleft()
            if isinstance(ev, RequestIdle):
                if ev.request in self.requests and self.progress.holds(ev.request) == 0:
                    self._out.append(Finish(ev.request))
                    self._forget(ev.request)
                continue
            req = self.requests.get(ev.prefix[0])
            if req is None:
                continue
            for action in req.watchers.pop((ev.target, ev.prefix), ()):
                if action[0] == "gone":
                    self._gone(self.stages[action[1]], action[2], ev.prefix)
                else:
                    self._close(self.stages[action[1]], ev.prefix)

    # -- request endings -----------------------------------------------------------------------

    def _fail_request(self, request: int, error: ErrorInfo | None) -> None:
        if request not in self.requests:
            return
        self.log.append(f"request {request} failed: {error}")
        self._out.append(Finish(request, error))
        self._drop_request(request)

    def _drop_request(self, request: int) -> None:
        for rep in self.replicas.values():
            if rep.state != "ready":
                continue
            mine = [k for k in rep.inflight if k[0] == request]
            held = any(g[0] == request for g in rep.groups)
            if mine or held:
                self._out.append(Abort(rep.id, request))
            rep.groups = {g for g in rep.groups if g[0] != request}
        self._forget(request)

    def _forget(self, request: int) -> None:
        self.requests.pop(request, None)
        self.progress.forget(request)

    @staticmethod
    def _named(levels: list[str], anc: Ancestry) -> dict[str, int]:
        return dict(zip(levels, anc[1:]))
