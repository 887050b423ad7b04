"""The router core: routing, joins, group completion and request lifetimes, as a state machine.

Events in, instructions out; no sockets, no asyncio, no clock, so that a test can script it
event by event and read every decision it makes. The served router and the in-process
reference executor are both thin shells around one ``RouterCore``: the router carries its
instructions over sockets to worker processes, the executor to stage runners in the same
process. Payloads are opaque here (bytes in the router, Python objects in the executor): the
core stores and forwards them, it never looks inside.

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
replicas to abort its work (``Abort``), and forgets everything about it, what is parked for
its groups' slots included (a slot's next replica is given nothing of a request that ended).

A replica is ``ready`` from its ``ReplicaUp`` until its ``ReplicaDown``, then ``dead`` for good
(``_REPLICA_TRANSITIONS``). When one dies, its work in flight that has produced nothing yet runs
again on another replica of the stage, once; work that had produced something fails (or is
dropped, under ``on_error="drop"``). Keyed work for a slot with no live replica is parked until
the slot's next ``ReplicaUp``.

Replay: aggregate state outlives its replica. The core sees every input it sends to a keyed
group, so it keeps them (``_GroupLog``) until the group's ``FlushDone``, and when the group's
replica dies it rebuilds the group on the slot's next replica: ``Open`` again if it was opened,
then all the group's inputs in the order they were first sent (the new replica starts empty;
an input in flight at the death is in the log once, so it runs once more, and one already
acknowledged holds its pointstamp again until the replay of it is), then the ``Flush`` again
if it had been sent, once the replayed inputs are acknowledged (the replica folds an input
when its invocation returns, but acts on a flush at once). The group's outputs are counted:
those the new replica produces again, up to the number that already went on, are dropped, so
an early-decided group (``ops.first``, ``any``, ``all``) that had emitted does not emit twice.
Such a group (one result, already out) no longer needs its inputs: they are freed then, and
only its inputs in flight at the death are sent again. The log is bounded: ``replay_limit``
inputs for all groups together. A group whose next input finds the bound reached stops being
kept (its inputs are freed) and, if its replica dies before its flush is done, fails its
request with ``ReplicaDied`` as it did before replay existed; ``replay_limit=0`` turns replay
off.

Rescaling: a stage's replica count is the core's own (``count``), set by ``Rescale`` while
requests run. Its slots are 0 .. count-1, and a new keyed group goes to the slot that wins the
rendezvous hash over them: growing from n to n' moves only the groups that a new slot wins,
shrinking moves only those of the removed slots. A group that exists already (it has state on a
replica, or waits parked for its slot) is never moved: at a ``Rescale`` every such group of the
stage is pinned to the slot it is on (``pins``), and keeps that slot until it closes (its
``FlushDone``, or the discard of an unopened group), so its items are never split between two
replicas. A replica whose slot was removed is draining: it takes no load-balanced work and no
new group, runs what it holds and its pinned groups' items, and once it holds nothing (no
invocation in flight, no queued work, no group) it is retired, and ``Drained`` tells the shell
to stop it. Growing back over a draining slot keeps its replica (``_Keep``). A removed slot with
no replica (its replica died, or had not come up yet) strands nothing: its groups' pins are
dropped and what was parked for it (the replay of a dead replica's groups, queued items) goes to
each group's slot under the new count (``_rehome``), as a replay would on the slot's own next
replica.

Flow control: what the core queues is bounded, and shared fairly. Work waiting for a credit
waits in a ``_FairQueue``: one FIFO per request, served round-robin, so that a request with a
long backlog (a fan-out of a million items into one aggregate replica) holds another request's
items up by one turn per item, not by its whole backlog. A fan-out (generator) invocation is
paced with ``fanout_window`` (the served router's ``wire.FANOUT_WINDOW``): its replica may send
that many outputs before the first ``Grant``, and each ``Grant`` lets it send ``fanout_credit``
more. The core grants credit as the work those outputs caused leaves its queues (it counts,
per invocation, its outputs' work still queued), so a generator whose downstream is full is
paused where it runs, and never more than a window of its items waits here. While it waits
for credit (it has sent all it may) it lends its replica's credit to other work, so that a
stalled fan-out does not hold up other requests' invocations of its stage; the credit is taken
back with its next ``Grant`` (the replica counts an invocation that waits for credit as not
running, see ``worker.py``). A request whose
consumer does not keep up is paused (``Pause``, until ``Resume``; the router sends them as the
request's unread answer grows past ``--max-buffered-mib`` and shrinks again): its queued work
stays queued, its fan-outs get no credit, and what was already running finishes. Without a
window (the in-process executor) nothing is paced and no ``Grant`` is sent.

Everything the core keeps is a named record: ``_Work`` (an invocation, queued, parked or in
flight), ``_OpenGroup``/``_FlushGroup`` (a group message parked for its slot) and the watch
actions ``_CloseGroup``/``_GiveUp`` (what to do when progress tracking reports a location
unreachable). ``story(request)`` answers "what happened to this request?": the core's recent
decisions about it (parked, redispatched, given up, flushed, failed...), as ``StoryEntry``s.
"""

from __future__ import annotations

import functools
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
class Pause:
    """The request's consumer is behind: dispatch none of its work, grant its fan-outs nothing."""

    request: int


@dataclass(slots=True)
class Resume:
    """The request's consumer caught up: its queued work goes on, its fan-outs get credit."""

    request: int


@dataclass(slots=True)
class ReplicaUp:
    replica: int
    stage: str
    slot: int  # which of the stage's N replica slots (keys hash to slots)
    # Whether its keyed groups' inputs are logged for a replay. A replica in the router's own
    # process (inline, or the in-process executor's) cannot die without the router: no log.
    replay: bool = True


@dataclass(slots=True)
class ReplicaDown:
    replica: int


@dataclass(slots=True)
class Rescale:
    """Run ``stage`` on ``replicas`` slots (0 .. replicas-1) from now on (see "Rescaling")."""

    stage: str
    replicas: int


Event = Union[Submit, Output, Ack, FlushDone, Cancel, Pause, Resume, ReplicaUp, ReplicaDown, Rescale]


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
class Grant:
    """The fan-out invocation of ``stage`` on ``ancestry`` may send ``fanout_credit`` more outputs."""

    replica: int
    stage: str
    ancestry: Ancestry


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


@dataclass(slots=True)
class Drained:
    """``replica``, on a slot that a ``Rescale`` removed, holds nothing any more: stop it. The
    core has taken it off its slot already; its ``ReplicaDown`` is still expected."""

    replica: int
    stage: str
    slot: int


Instruction = Union[Invoke, Open, Flush, Abort, Emit, Finish, Grant, Drained]


class CoreError(Exception):
    """An event that the core's state does not allow (a peer or shell bug, not the user's)."""


# -- state -------------------------------------------------------------------------------------

# A stateless item with no output yet runs again when its replica dies, until replicas have died
# this many times while running it; then it is a poison input, failed with ReplicaDied (or dropped
# under on_error="drop") rather than run again. Two: one death can be bad luck (a kill, the OOM
# killer taking the largest process); two in a row on different replicas are the item.
POISON_DEATHS = 2

ReplicaState = Literal["ready", "draining", "retired", "dead"]


class _Drain:
    """A ``Rescale`` removed the replica's slot."""


class _Keep:
    """A ``Rescale`` gave the draining replica's slot back before it had drained."""


class _Retire:
    """The draining replica holds nothing any more (``Drained``)."""


# What each replica state accepts, and the state it leads to, in the shape of h11's tables: state
# -> event type -> next state. A replica is ready from its ReplicaUp; ReplicaDown makes it dead
# for good (a restarted process comes back as a new replica id, on the same slot). A dead replica
# takes nothing: an Output or Ack from it after its ReplicaDown would count work twice that has
# been run again elsewhere, so it is the shell's bug and is refused (``CoreError``). A replica
# whose slot a rescale removed is draining: it finishes what it holds and takes nothing new but
# its own groups' items; once it holds nothing it is retired (off its slot, ``Drained``) until
# its ReplicaDown. A retired replica may still send late words (a discarded group's FlushDone,
# an aborted request's Ack), which are dropped.
_REPLICA_TRANSITIONS: dict[ReplicaState, dict[type, ReplicaState]] = {
    "ready": {Output: "ready", Ack: "ready", FlushDone: "ready", ReplicaDown: "dead",
              _Drain: "draining"},
    "draining": {Output: "draining", Ack: "draining", FlushDone: "draining", ReplicaDown: "dead",
                 _Keep: "ready", _Retire: "retired"},
    "retired": {Output: "retired", Ack: "retired", FlushDone: "retired", ReplicaDown: "dead"},
    "dead": {},
}


@dataclass(slots=True)
class _Work:
    """An invocation the core has decided on: queued for a credit, parked for its slot's next
    replica, or in flight (``outputs`` counts the items it has produced there so far)."""

    ancestry: Ancestry
    args: dict[str, Any]  # parameter -> payload (request fields included)
    outputs: int = 0
    deaths: int = 0  # replicas that died while running it (see POISON_DEATHS)
    # Flow control (see the module's docstring). A paced fan-out invocation in flight: its
    # replica (-1 otherwise), the outputs it may send in all, and its outputs' work still queued.
    replica: int = -1
    granted: int = 0
    queued: int = 0
    lent: bool = False  # it waits for credit, and its replica's credit is lent to other work
    # Queued work caused by a paced invocation's output: that invocation, until this leaves the
    # queue (then the invocation's ``queued`` goes down and it may get credit).
    source: "_Work | None" = None


class _FairQueue:
    """Work waiting for a credit: one FIFO per request, taken round-robin (``pop``), skipping
    paused requests. ``tally`` is the core's count of queued work, and its peak."""

    __slots__ = ("_fifos", "_len", "_tally", "_turns")

    def __init__(self, tally: list[int]) -> None:
        self._fifos: dict[int, deque[_Work]] = {}
        self._turns: deque[int] = deque()  # requests with queued work, the next one first
        self._len = 0
        self._tally = tally  # [queued now, the most queued at once], shared by the core's queues

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        for request in self._turns:
            yield from self._fifos[request]

    def append(self, work: _Work) -> None:
        request = work.ancestry[0]
        fifo = self._fifos.get(request)
        if fifo is None:
            fifo = self._fifos[request] = deque()
            self._turns.append(request)
        fifo.append(work)
        self._len += 1
        tally = self._tally
        tally[0] += 1
        if tally[0] > tally[1]:
            tally[1] = tally[0]

    def pop(self, paused: set[int]) -> _Work | None:
        """The next request's oldest work, or None if all that waits is of paused requests."""
        turns = self._turns
        for _ in range(len(turns)):
            request = turns.popleft()
            if request in paused:
                turns.append(request)
                continue
            fifo = self._fifos[request]
            work = fifo.popleft()
            if fifo:
                turns.append(request)
            else:
                del self._fifos[request]
            self._len -= 1
            self._tally[0] -= 1
            return work
        return None

    def discard(self, request: int) -> None:
        """Forget the work of ``request`` (it ended)."""
        fifo = self._fifos.pop(request, None)
        if fifo is not None:
            self._turns.remove(request)
            self._len -= len(fifo)
            self._tally[0] -= len(fifo)

    def clear(self) -> None:
        self._tally[0] -= self._len
        self._fifos.clear()
        self._turns.clear()
        self._len = 0


@dataclass(slots=True)
class _GroupLog:
    """What a keyed group's replica was sent, to rebuild the group on the slot's next replica."""

    inputs: dict[Ancestry, _Work] = field(default_factory=dict)  # sent, not dropped; in order
    delivered: int = 0  # the group's outputs that went on (to the client and to consumers)
    seen: int = 0  # outputs the group's present replica has produced
    done: bool = False  # its one result went on: its inputs are no longer needed
    overflowed: bool = False  # past the replay limit: its inputs are no longer kept


@dataclass(slots=True)
class _OpenGroup:
    """An ``Open`` of a keyed group, parked until its slot has a replica again."""

    stage: str
    prefix: Ancestry


@dataclass(slots=True)
class _FlushGroup:
    """A ``Flush`` of a keyed group, parked until its slot has a replica again."""

    stage: str
    prefix: Ancestry
    opened: bool


Parked = Union[_Work, _OpenGroup, _FlushGroup]


# What to do when progress tracking reports a watched (location, prefix) unreachable. One of
# each is built per stage (or join input) with the core and shared by every watch.


@dataclass(slots=True, frozen=True)
class _CloseGroup:
    """Nothing more can reach ``stage``'s group ``prefix``: flush it (or discard its state)."""

    stage: str


@dataclass(slots=True, frozen=True)
class _GiveUp:
    """``source`` can no longer produce the input that ``consumer``'s join waits for at ``prefix``:
    the join entries waiting for it are dropped."""

    consumer: str
    source: str


@dataclass
class _Replica:
    id: int
    stage: str
    slot: int
    credits: int
    queue: _FairQueue  # keyed work waiting for a credit
    state: ReplicaState = "ready"
    inflight: dict[tuple[int, Ancestry], _Work] = field(default_factory=dict)
    groups: set[Ancestry] = field(default_factory=set)  # keyed groups it holds state for
    replay: bool = False  # keyed, with replay on: what it is sent is logged (``_GroupLog``)


@dataclass
class _Join:
    pending: dict[Ancestry, dict[str, Any]] = field(default_factory=dict)
    values: dict[tuple[str, Ancestry], Any] = field(default_factory=dict)
    waiting: dict[tuple[str, Ancestry], set[Ancestry]] = field(default_factory=lambda: defaultdict(set))


class _Request:
    """One request's state in the core. A plain slotted class: one is built per request, and a
    dataclass with five default factories cost twice as much."""

    __slots__ = ("fields", "flushing", "id", "joins", "logs", "opened", "touched", "watchers")

    def __init__(self, id: int, fields: dict[str, Any]) -> None:
        self.id = id
        self.fields = fields
        self.joins: dict[str, _Join] = defaultdict(_Join)
        self.opened: set[tuple[str, Ancestry]] = set()
        self.touched: set[tuple[str, Ancestry]] = set()
        self.flushing: set[tuple[str, Ancestry]] = set()  # opened, flush sent
        self.watchers: dict[tuple[int, Ancestry], list[_CloseGroup | _GiveUp]] = {}
        self.logs: dict[tuple[str, Ancestry], _GroupLog] = {}  # keyed groups' inputs, for replay


# -- the story ---------------------------------------------------------------------------------

Happening = Literal[
    "finish",      # the request ended with nothing left in flight
    "fail",        # the request ended with a stage's error (``detail``)
    "cancel",      # the client went away
    "abort",       # ``replica`` was told to drop the request's work
    "open",        # a keyed group exists (sent to ``replica``, None: parked)
    "flush",       # an opened group is complete: emit its result
    "discard",     # a group that was never opened is complete: drop its state
    "park",        # keyed work waits for its slot's next replica
    "unpark",      # ... and went to ``replica``, the slot's new replica
    "redispatch",  # work that ``replica`` died running, with no output yet, runs again elsewhere
    "poison",      # ... unless replicas died running it POISON_DEATHS times: failed or dropped
    "lost",        # work that ``replica`` died running, after some output: failed or dropped
    "replay",      # a group of a dead replica is rebuilt on the slot's next one (``detail``: inputs)
    "over-limit",  # the replay limit is reached: this group's inputs are no longer kept
    "repeat",      # a replayed group's output that had gone on already was dropped
    "give-up",     # a join stops waiting for ``detail`` (that input cannot arrive)
    "pause",       # the request's consumer is behind: its work waits, its fan-outs get no credit
    "resume",      # ... and caught up
    "replica-up",
    "replica-down",
    "rescale",     # the stage runs on ``detail`` slots from now on ("old -> new")
    "drain",       # ``replica``'s slot was removed: it finishes what it holds, takes nothing new
    "keep",        # ... and was given back before it had drained
    "drained",     # ... and holds nothing any more: it is to be stopped (``Drained``)
    "rehome",      # keyed work for a removed slot with no replica goes to the group's new slot
]


class StoryEntry(NamedTuple):
    """One decision of the core, as ``RouterCore.story`` returns it."""

    request: int | None  # None for a replica's own happenings
    stage: str | None
    ancestry: Ancestry | None
    what: Happening
    replica: int | None = None
    detail: str | None = None


class CoreStatistics(NamedTuple):
    """Invocations per stage: ``queued`` wait for a replica's credit (in the stage's queue, a
    keyed replica's queue, or parked for a slot with no live replica); ``in_flight`` have been
    dispatched to a replica and not acknowledged yet."""

    queued: dict[str, int]
    in_flight: dict[str, int]
    replay_buffered: int = 0  # inputs kept to replay keyed groups (all stages together)
    queued_peak: int = 0  # the most invocations waiting in the queues at once, since the start
    paused: int = 0  # requests paused because their consumer is behind


class SlotState(NamedTuple):
    """One replica slot of a stage, as ``RouterCore.scale`` reports it: ``starting`` (a slot
    with no live replica yet), ``ready``, ``draining`` (removed, finishing what it holds), or
    ``stopping`` (drained, its replica not down yet)."""

    slot: int
    state: Literal["starting", "ready", "draining", "stopping"]
    replica: int | None = None


@functools.lru_cache(maxsize=4096)
def _rendezvous(stage: str, prefix: Ancestry, replicas: int) -> int:
    """Rendezvous hashing over ``replicas`` slots; cached, as every item of a group asks for
    its slot (the claim verifier's ``bm25``: once a token)."""
    key = repr((stage, prefix)).encode()
    return max(range(replicas), key=lambda s: hashlib.blake2b(
        key + s.to_bytes(4, "little"), digest_size=8).digest())


class RouterCore:
    """All routing and progress decisions of one router, for any number of requests.

    ``story_length`` bounds the story (``story``): the most recent decisions it keeps.
    ``replay_limit`` bounds the inputs kept to replay keyed groups (see "Replay" above); 0
    keeps none, and a keyed replica's death fails the requests with a group on it.
    ``fanout_window`` paces fan-out invocations (see "Flow control" above): the outputs one
    may send before its first ``Grant``; each ``Grant`` is worth ``fanout_credit`` more (half
    the window unless given). None paces nothing.
    ``pin_requests`` (a benchmark knob: ``serve --route-by-request``) sends every load-balanced
    stage's items to the slot their request hashes to, so that all of a request's items meet on
    one replica of each stage, as if every stage were keyed by the request.
    """

    def __init__(self, plan: Plan, *, seed: int | None = None, story_length: int = 2000,
                 replay_limit: int = 100_000, fanout_window: int | None = None,
                 fanout_credit: int | None = None, pin_requests: bool = False) -> None:
        if replay_limit < 0:
            raise ValueError(f"replay_limit must be 0 (no replay) or more, got {replay_limit}")
        if fanout_window is not None:
            fanout_credit = fanout_credit or max(1, fanout_window // 2)
            if not 1 <= fanout_credit <= fanout_window:
                raise ValueError(f"need 1 <= fanout_credit <= fanout_window, not {fanout_credit} "
                                 f"and {fanout_window}")
        self.plan = plan
        # A benchmark knob (benchmarks/figure4.py): route every load-balanced stage's items by
        # their request, as if each stage were keyed by it, so that all of a request's items
        # meet on one replica of each stage. altoflow's own rule keys aggregates only.
        self.pin_requests = pin_requests
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
        # Rescaling (see the module's docstring): each stage's slot count now; the slot of each
        # keyed group that was open at a Rescale, until it closes; the requests' pinned groups;
        # the draining replicas.
        self.count: dict[str, int] = {s.name: s.replicas for s in plan.stages}
        self.pins: dict[tuple[str, Ancestry], int] = {}
        self._pins_of: dict[int, set[tuple[str, Ancestry]]] = {}
        self._draining: set[int] = set()
        self._tally = [0, 0]  # invocations in the fair queues now, and the most at once
        self.stage_queue: dict[str, _FairQueue] = {s.name: _FairQueue(self._tally) for s in plan.stages}
        self.paused: set[int] = set()  # requests whose consumer is behind (Pause)
        self.fanout_window = fanout_window
        self.fanout_credit = fanout_credit or 0
        # The stages whose invocations are paced: fan-outs that are generators (an aggregate that
        # fans out emits its list at a flush, at once).
        self._paced = ({s.name for s in plan.stages if s.fanout is not None and s.operator is None}
                       if fanout_window is not None else set())
        self._source: _Work | None = None  # the paced invocation whose output is being routed
        # Keyed work whose slot has no live replica, waiting for ReplicaUp: (stage, slot) -> queue
        self.parked: dict[tuple[str, int], deque[Parked]] = {}
        self.requests: dict[int, _Request] = {}
        self.poisoned: dict[str, int] = dict.fromkeys(self.stages, 0)  # items given up, per stage
        self._rng = random.Random(seed)
        self._out: list[Instruction] = []
        self._fired: deque = deque()
        # Plain tuples in the order of StoryEntry's fields: one is built per request (its end)
        # and per group, so they must cost next to nothing; ``story`` names them on the way out.
        self._story: deque[tuple] = deque(maxlen=story_length)
        self._close_group = {s.name: _CloseGroup(s.name) for s in plan.stages if s.route_key is not None}
        self._give_up = {(s.name, i): _GiveUp(s.name, i) for s in plan.stages for i in s.inputs}
        self.replay_limit = replay_limit
        self.replay_buffered = 0  # inputs held in the requests' ``_GroupLog``s
        # A keyed stage's group prefix length, for the stages whose groups are replayed.
        self._group_cut = ({s.name: 1 + len(s.route_key) for s in plan.stages if s.route_key is not None}
                           if replay_limit else {})
        # Fan-outs whose replicas fold their items into the aggregate named here themselves
        # (``runtime.fusion``): that aggregate's result comes from the fan-out's replica, and
        # the core opens no group of it. Set by ``fuse`` before any replica is up.
        self.fused: dict[str, str] = {}
        self._handlers = {
            Submit: self._on_Submit, Output: self._on_Output, Ack: self._on_Ack,
            FlushDone: self._on_FlushDone, Cancel: self._on_Cancel, Pause: self._on_Pause,
            Resume: self._on_Resume, ReplicaUp: self._on_ReplicaUp, ReplicaDown: self._on_ReplicaDown,
            Rescale: self._on_Rescale,
        }

    def fuse(self, pairs: dict[str, str]) -> None:
        """Fuse each fan-out of ``pairs`` into its aggregate (``runtime.fusion.fusable``)."""
        if self.replicas:
            raise CoreError("stages fuse before any replica is up")
        for a, b in pairs.items():
            if self.stages[a].consumers != [b] or self.stages[b].over != self.stages[a].fanout:
                raise CoreError(f"stage {a} does not fuse into {b}")
        self.fused = dict(pairs)
        self._paced -= set(pairs)  # its items stay on its replica: nothing to pace
        for b in pairs.values():
            self._group_cut.pop(b, None)  # its groups live in one invocation: nothing to replay

    # -- the one entry point -------------------------------------------------------------------

    def handle(self, event: Event) -> list[Instruction]:
        out = self._out = []
        self._handlers[type(event)](event)
        if self._fired:
            self._pump()
        if self._draining:
            self._check_drained()
        self._out = []
        return out

    # The router's per-frame entry points: ``handle(Output(...))`` and ``handle(Ack(...))``
    # without building the event (two of the ~70 us a request costs the router).

    def output(self, replica: int, stage: str, ancestry: Ancestry, payload: Any) -> list[Instruction]:
        out = self._out = []
        self._output(replica, stage, ancestry, payload)
        if self._fired:
            self._pump()
        if self._draining:
            self._check_drained()
        self._out = []
        return out

    def ack(self, replica: int, stage: str, ancestry: Ancestry, status: Status,
            error: ErrorInfo | None = None) -> list[Instruction]:
        out = self._out = []
        self._ack_in(replica, stage, ancestry, status, error)
        if self._fired:
            self._pump()
        if self._draining:
            self._check_drained()
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
            queued[name] += sum(1 for entry in parked if type(entry) is _Work)
        return CoreStatistics(queued, in_flight, self.replay_buffered, self._tally[1], len(self.paused))

    def scale(self, stage: str) -> list[SlotState]:
        """``stage``'s slots now: each of 0 .. count-1, then the removed ones whose replica
        has not gone yet."""
        states: dict[int, SlotState] = {
            slot: SlotState(slot, "starting") for slot in range(self.count[stage])}
        for rep in self.replicas.values():
            if rep.stage != stage or rep.state == "dead":
                continue
            shown = {"ready": "ready", "draining": "draining", "retired": "stopping"}[rep.state]
            if rep.state == "retired" and rep.slot in states:
                continue  # its slot came back, for a new replica
            states[rep.slot] = SlotState(rep.slot, shown, rep.id)  # type: ignore[arg-type]
        return [states[slot] for slot in sorted(states)]

    # -- what happened -------------------------------------------------------------------------

    def story(self, *requests: int) -> list[StoryEntry]:
        """The core's recent decisions about any of ``requests``, oldest first (all of them when
        none is named). Routine work (a request's arrival, each invocation, output and ack) is
        not recorded: it would cost every item an entry and push out the rest. The story keeps
        what a request's fate turns on, and how it ended."""
        if not requests:
            return [StoryEntry._make(e) for e in self._story]
        wanted = set(requests)
        return [StoryEntry._make(e) for e in self._story if e[0] in wanted]

    # -- replicas ------------------------------------------------------------------------------

    def _transition(self, replica: int, event: type) -> _Replica:
        """Move ``replica`` along ``_REPLICA_TRANSITIONS`` for ``event``, or refuse it."""
        rep = self.replicas.get(replica)
        if rep is None:
            raise CoreError(f"{event.__name__} from replica {replica}, which never reported ReplicaUp")
        state = _REPLICA_TRANSITIONS[rep.state].get(event)
        if state is None:
            raise CoreError(f"replica {replica} ({rep.stage}, slot {rep.slot}) is {rep.state} "
                            f"and cannot report {event.__name__}")
        rep.state = state
        return rep

    def _on_ReplicaUp(self, ev: ReplicaUp) -> None:
        stage = self.stages[ev.stage]
        if ev.replica in self.replicas:
            raise CoreError(f"replica {ev.replica} announced twice")
        if not 0 <= ev.slot < self.count[ev.stage]:
            raise CoreError(f"stage {ev.stage} has {self.count[ev.stage]} replica slots, not {ev.slot + 1}")
        rep = _Replica(ev.replica, ev.stage, ev.slot, credits=stage.concurrency,
                       queue=_FairQueue(self._tally), replay=ev.replay and ev.stage in self._group_cut)
        self.replicas[ev.replica] = rep
        self.slots[ev.stage][ev.slot] = ev.replica
        self._story.append((None, ev.stage, None, "replica-up", rep.id, None))
        # Keyed work that waited for this slot goes first, in the order it came.
        for entry in self.parked.pop((ev.stage, ev.slot), ()):
            if type(entry) is _Work:
                if entry.ancestry[0] not in self.requests:
                    continue
                self._story.append((entry.ancestry[0], ev.stage, entry.ancestry, "unpark", rep.id, None))
                rep.queue.append(entry)
                rep.groups.add(entry.ancestry[: 1 + len(stage.route_key or ())])
            elif entry.prefix[0] in self.requests:
                self._story.append((entry.prefix[0], ev.stage, entry.prefix, "unpark", rep.id, None))
                self._send_group(rep, entry)
        self._feed(rep)

    def _send_group(self, rep: _Replica, entry: _OpenGroup | _FlushGroup) -> None:
        """Send a parked group message to ``rep``, which now holds the group."""
        rep.groups.add(entry.prefix)
        if type(entry) is _OpenGroup:
            self._out.append(Open(rep.id, entry.stage, entry.prefix))
        else:
            self._out.append(Flush(rep.id, entry.stage, entry.prefix, entry.opened))  # type: ignore[union-attr]
            if not entry.opened:  # type: ignore[union-attr]
                self._unpin(entry.stage, entry.prefix)

    # -- rescaling -----------------------------------------------------------------------------

    def _on_Rescale(self, ev: Rescale) -> None:
        stage = self.stages.get(ev.stage)
        if stage is None:
            raise CoreError(f"Rescale of unknown stage {ev.stage!r}; stages: {', '.join(self.stages)}")
        n = ev.replicas
        if type(n) is not int or n < 1:
            raise CoreError(f"Rescale of {ev.stage} to {n!r} replicas: a stage needs at least 1")
        old = self.count[ev.stage]
        if n == old:
            return
        if stage.route_key is not None:
            self._pin_groups(stage)
        self.count[ev.stage] = n
        self._story.append((None, ev.stage, None, "rescale", None, f"{old} -> {n}"))
        for rep in list(self.replicas.values()):
            if rep.stage != ev.stage:
                continue
            if rep.state == "ready" and rep.slot >= n:
                self._move(rep, _Drain)
                self._draining.add(rep.id)
                self._story.append((None, ev.stage, None, "drain", rep.id, None))
            elif rep.state == "draining" and rep.slot < n:
                self._move(rep, _Keep)
                self._draining.discard(rep.id)
                self._story.append((None, ev.stage, None, "keep", rep.id, None))
                self._feed(rep)
        for name, slot in [k for k in self.parked if k[0] == ev.stage and k[1] >= n]:
            self._rehome(name, slot)
        if self.pins:
            for slot in {s for (name, _), s in self.pins.items() if name == ev.stage and s >= n}:
                if slot not in self.slots[ev.stage]:
                    self._rehome(ev.stage, slot)

    def _move(self, rep: _Replica, step: type) -> None:
        state = _REPLICA_TRANSITIONS[rep.state].get(step)
        if state is None:
            raise CoreError(f"replica {rep.id} ({rep.stage}, slot {rep.slot}) is {rep.state}: "
                            f"cannot {step.__name__[1:].lower()}")
        rep.state = state

    def _pin_groups(self, stage: StagePlan) -> None:
        """Pin every group of ``stage`` that exists now to the slot it is on."""
        name = stage.name
        for rep in self.replicas.values():
            if rep.stage == name and rep.state in ("ready", "draining"):
                for prefix in rep.groups:
                    self._pin(name, prefix, rep.slot)
        cut = 1 + len(stage.route_key or ())
        for (pname, slot), entries in self.parked.items():
            if pname == name:
                for entry in entries:
                    self._pin(name, entry.ancestry[:cut] if type(entry) is _Work else entry.prefix, slot)  # type: ignore[union-attr]

    def _pin(self, name: str, prefix: Ancestry, slot: int) -> None:
        key = (name, prefix)
        if key not in self.pins and prefix[0] in self.requests:
            self.pins[key] = slot
            self._pins_of.setdefault(prefix[0], set()).add(key)

    def _unpin(self, name: str, prefix: Ancestry) -> None:
        if self.pins and self.pins.pop((name, prefix), None) is not None:
            keys = self._pins_of.get(prefix[0])
            if keys is not None:
                keys.discard((name, prefix))
                if not keys:
                    del self._pins_of[prefix[0]]

    def _rehome(self, name: str, slot: int) -> None:
        """``slot`` of ``name`` was removed and has no replica: its groups hash again over the
        stage's slots now, and what was parked for it goes to each group's new slot."""
        if self.pins:
            for key in [k for k, s in self.pins.items() if s == slot and k[0] == name]:
                self._unpin(*key)
        stage = self.stages[name]
        for entry in self.parked.pop((name, slot), ()):
            if type(entry) is _Work:
                if entry.ancestry[0] in self.requests:
                    self._story.append((entry.ancestry[0], name, entry.ancestry, "rehome", None, None))
                    self._route(stage, entry)
                continue
            if entry.prefix[0] not in self.requests:
                continue
            self._story.append((entry.prefix[0], name, entry.prefix, "rehome", None, None))
            rid = self.slots[name].get(self._slot(stage, entry.prefix))
            if rid is None:
                self._park(stage, entry.prefix, entry)
            else:
                self._send_group(self.replicas[rid], entry)

    def _check_drained(self) -> None:
        """Retire the draining replicas that hold nothing any more (``Drained``)."""
        for rid in sorted(self._draining):
            rep = self.replicas[rid]
            if rep.inflight or rep.queue or any(g[0] in self.requests for g in rep.groups):
                continue
            self._draining.discard(rid)
            self._move(rep, _Retire)
            rep.groups.clear()
            if self.slots[rep.stage].get(rep.slot) == rid:
                del self.slots[rep.stage][rep.slot]
            self._story.append((None, rep.stage, None, "drained", rid, None))
            self._out.append(Drained(rid, rep.stage, rep.slot))
            if rep.slot >= self.count[rep.stage]:
                self._rehome(rep.stage, rep.slot)

    def _on_ReplicaDown(self, ev: ReplicaDown) -> None:
        rep = self._transition(ev.replica, ReplicaDown)
        self._draining.discard(rep.id)
        self._story.append((None, rep.stage, None, "replica-down", rep.id, None))
        self._replica_down(rep)
        if rep.slot >= self.count[rep.stage] and rep.slot not in self.slots[rep.stage]:
            self._rehome(rep.stage, rep.slot)  # a removed slot: no next replica comes for it

    def _replica_down(self, rep: _Replica) -> None:
        if self.slots[rep.stage].get(rep.slot) == rep.id:
            del self.slots[rep.stage][rep.slot]
        stage = self.stages[rep.stage]
        inflight, rep.inflight = rep.inflight, {}
        for work in inflight.values():
            work.replica = -1  # no longer running anywhere: it gets no credit
            work.lent = False
        replays: deque[Parked] = deque()
        if rep.replay:
            replays = self._replay(rep, stage, inflight)
        else:
            # Aggregate state on it is gone: requests with a group there cannot complete.
            for prefix in sorted(rep.groups):
                if prefix[0] in self.requests:
                    self._fail_request(prefix[0], ErrorInfo(
                        stage.name, self._named(stage.route_key or [], prefix),
                        f"the replica holding this group's aggregate state died (replica {rep.id})",
                        "ReplicaDied"))
        rep.groups.clear()
        if replays:
            # The rebuilt groups go first to the slot's next replica, then its queued work.
            self.parked.setdefault((rep.stage, rep.slot), deque()).extend(replays)
        if rep.queue:
            # Keyed work for this slot waits for the slot's next replica; what the replay already
            # sends again (an earlier replay's inputs, queued here and not yet run) goes once.
            again = {w.ancestry for w in replays if type(w) is _Work}
            parked = self.parked.setdefault((rep.stage, rep.slot), deque())
            for work in rep.queue:
                if work.ancestry[0] in self.requests and work.ancestry not in again:
                    self._story.append((work.ancestry[0], stage.name, work.ancestry, "park", None, None))
                    parked.append(work)
            rep.queue.clear()
            if not parked:
                del self.parked[(rep.stage, rep.slot)]
        if rep.replay:
            return  # its work in flight is in the replayed groups (or failed with its request)
        for (req, anc), work in sorted(inflight.items(), key=lambda kv: kv[0]):
            if req not in self.requests:
                continue
            if work.outputs == 0 and stage.route_key is None:
                work.deaths += 1
                if work.deaths >= POISON_DEATHS:
                    # It kills whatever runs it (os._exit, a crash in C, the OOM killer): running
                    # it again would take the stage's replicas down in a loop.
                    self._story.append((req, stage.name, anc, "poison", rep.id, None))
                    self.poisoned[stage.name] += 1
                    self._ack(stage, anc, "failed" if stage.on_error == "fail" else "dropped",
                              ErrorInfo(stage.name, self._named(stage.levels_in, anc),
                                        f"stage {stage.name!r} at {self._named(stage.levels_in, anc)}: "
                                        f"{work.deaths} replicas died running this item (the last: "
                                        f"replica {rep.id}), so it is not run again; find out why it "
                                        f"kills the process (os._exit, a crash in a C extension, "
                                        f"running out of memory)", "ReplicaDied"))
                    continue
                # Nothing of it reached anyone: run it again elsewhere, exactly once overall.
                self._story.append((req, stage.name, anc, "redispatch", rep.id, None))
                self._route(stage, work)
            else:
                self._story.append((req, stage.name, anc, "lost", rep.id, None))
                self._ack(stage, anc, "failed" if stage.on_error == "fail" else "dropped",
                          ErrorInfo(stage.name, self._named(stage.levels_in, anc),
                                    f"replica {rep.id} died while running this item",
                                    "ReplicaDied"))

    def _replay(self, rep: _Replica, stage: StagePlan, inflight: dict[tuple[int, Ancestry], _Work]) -> deque[Parked]:
        """What rebuilds the groups of the dead keyed replica ``rep`` on its slot's next replica
        (see "Replay" in the module's docstring); requests whose group cannot be rebuilt fail."""
        cut = self._group_cut[stage.name]
        running: dict[Ancestry, list[_Work]] = defaultdict(list)  # in the order they were sent
        for (_req, anc), work in inflight.items():
            running[anc[:cut]].append(work)
        in_loc = self.topo.in_loc[stage.name]
        queued = {work.ancestry for work in rep.queue}  # an earlier replay's, not run yet: held
        replays: deque[Parked] = deque()
        for prefix in sorted(rep.groups | running.keys()):
            req = self.requests.get(prefix[0])
            if req is None:
                continue
            key = (stage.name, prefix)
            log = req.logs.get(key)
            if log is None:
                log = req.logs[key] = _GroupLog()
            if log.overflowed and not log.done:
                self._fail_request(prefix[0], ErrorInfo(
                    stage.name, self._named(stage.route_key or [], prefix),
                    f"the replica holding this group's aggregate state died (replica {rep.id}), "
                    f"and the group could not be replayed: the router keeps at most "
                    f"{self.replay_limit} inputs of open groups (--replay-limit), and this "
                    f"group's came past it; raise --replay-limit to survive this", "ReplicaDied"))
                continue
            works = running.get(prefix, []) if log.done else list(log.inputs.values())
            for work in works:
                if (prefix[0], work.ancestry) not in inflight and work.ancestry not in queued:
                    # Acknowledged on the dead replica: held again until its replay is.
                    self._hold(in_loc, work.ancestry)
            log.seen = 0
            self._story.append((prefix[0], stage.name, prefix, "replay", None, str(len(works))))
            if key in req.opened or key in req.flushing:
                replays.append(_OpenGroup(stage.name, prefix))
            replays.extend(works)
            if key in req.flushing:
                # Its Flush was sent: send it again when the replayed inputs are folded.
                req.flushing.discard(key)
                req.opened.add(key)
                self._watch(in_loc, prefix, self._close_group[stage.name])
        return replays

    def _log_input(self, name: str, work: _Work) -> None:
        """Keep an input sent to a keyed group, for a replay (``replay_limit`` bounds them)."""
        anc = work.ancestry
        req = self.requests.get(anc[0])
        if req is None:
            return
        key = (name, anc[: self._group_cut[name]])
        log = req.logs.get(key)
        if log is None:
            log = req.logs[key] = _GroupLog()
        if log.done or log.overflowed or anc in log.inputs:  # the last: it is being replayed
            return
        if self.replay_buffered >= self.replay_limit:
            log.overflowed = True
            self.replay_buffered -= len(log.inputs)
            log.inputs.clear()
            self._story.append((anc[0], name, key[1], "over-limit", None, None))
            return
        log.inputs[anc] = work
        self.replay_buffered += 1

    def _group_output(self, req: _Request, name: str, prefix: Ancestry) -> bool:
        """Count an output of a keyed group; False for one that went on already (a replay's)."""
        key = (name, prefix)
        log = req.logs.get(key)
        if log is None:
            log = req.logs[key] = _GroupLog()
        log.seen += 1
        if log.seen <= log.delivered:
            self._story.append((prefix[0], name, prefix, "repeat", None, None))
            return False
        log.delivered = log.seen
        if self.stages[name].fanout is None and not log.done:
            # Its one result is out: a replay only needs its inputs in flight then.
            log.done = True
            self.replay_buffered -= len(log.inputs)
            log.inputs.clear()
        return True

    def _drop_log(self, req: _Request, key: tuple[str, Ancestry]) -> None:
        log = req.logs.pop(key, None)
        if log is not None:
            self.replay_buffered -= len(log.inputs)

    # -- requests ------------------------------------------------------------------------------

    def _on_Submit(self, ev: Submit) -> None:
        if ev.request in self.requests:
            raise CoreError(f"request {ev.request} submitted twice")
        self.requests[ev.request] = _Request(ev.request, dict(ev.fields))
        for name in self.sources:
            self._dispatch(self.stages[name], (ev.request,), {})

    def _on_Cancel(self, ev: Cancel) -> None:
        if ev.request in self.requests:
            self._story.append((ev.request, None, None, "cancel", None, None))
            self._drop_request(ev.request)

    def _on_Pause(self, ev: Pause) -> None:
        if ev.request in self.requests and ev.request not in self.paused:
            self._story.append((ev.request, None, None, "pause", None, None))
            self.paused.add(ev.request)

    def _on_Resume(self, ev: Resume) -> None:
        if ev.request not in self.paused:
            return
        self._story.append((ev.request, None, None, "resume", None, None))
        self.paused.discard(ev.request)
        for rep in list(self.replicas.values()):
            if rep.state == "dead":
                continue
            if self._paced and rep.stage in self._paced:
                for (request, _anc), work in list(rep.inflight.items()):
                    if request == ev.request:
                        self._grant(work)
            if rep.credits > 0 and (rep.queue or self.stage_queue[rep.stage]):
                self._feed(rep)

    # -- items from replicas -------------------------------------------------------------------

    def _on_Output(self, ev: Output) -> None:
        self._output(ev.replica, ev.stage, ev.ancestry, ev.payload)

    def _output(self, replica: int, name: str, anc: Ancestry, payload: Any) -> None:
        rep = self.replicas.get(replica)
        work = None if rep is None else rep.inflight.get((anc[0], anc[: self._in_cut[name]]))
        if work is None:
            # Not from work in flight there (a group's result, or a late word): may it speak?
            # A replica with work in flight is ready; a dead one has none.
            self._transition(replica, Output)
        else:
            work.outputs += 1
        req = self.requests.get(anc[0])
        if req is None:
            return  # the request ended (failed or cancelled): late output is dropped
        cut = self._group_cut.get(name)
        if cut is not None and not self._group_output(req, name, anc[:cut]):
            return
        if work is not None and work.replica >= 0:
            # A paced fan-out's item: the work it causes and queues counts against its window.
            self._source = work
            try:
                self._emit(self.stages[name], anc, payload)
            finally:
                self._source = None
            self._grant(work)
            if work.outputs >= work.granted and not work.lent and work.replica >= 0:
                self._lend(work)
            return
        self._emit(self.stages[name], anc, payload)

    def _on_Ack(self, ev: Ack) -> None:
        self._ack_in(ev.replica, ev.stage, ev.ancestry, ev.status, ev.error)

    def _ack_in(self, replica: int, name: str, anc: Ancestry, status: Status, error: ErrorInfo | None) -> None:
        rep = self.replicas.get(replica)
        work = None if rep is None else rep.inflight.pop((anc[0], anc), None)
        if work is None:
            self._transition(replica, Ack)
            return  # already settled (the request ended, or the replica acked it twice)
        work.replica = -1  # a paced invocation that ended gets no more credit
        if work.lent:
            work.lent = False  # its credit is back already
        else:
            rep.credits += 1
        if anc[0] in self.requests:
            if status == "dropped" and rep.replay:
                log = self.requests[anc[0]].logs.get((name, anc[: self._group_cut[name]]))
                if log is not None and log.inputs.pop(anc, None) is not None:
                    self.replay_buffered -= 1  # not folded: nothing to replay
            self._ack(self.stages[name], anc, status, error)
        if rep.queue or self.stage_queue[rep.stage]:
            self._feed(rep)

    def _on_FlushDone(self, ev: FlushDone) -> None:
        rep = self._transition(ev.replica, FlushDone)
        rep.groups.discard(ev.prefix)
        req = self.requests.get(ev.prefix[0])
        if req is None:
            return
        if (ev.stage, ev.prefix) in req.flushing:
            self._unpin(ev.stage, ev.prefix)  # the group is over: the next of its key hashes anew
        if ev.status == "failed":
            # From a flush, or from an open whose group was decided at once and failed to emit.
            self._fail_request(ev.prefix[0], ev.error)
            return
        stage = self.stages[ev.stage]
        if (stage.name, ev.prefix) not in req.flushing:
            return  # the answer to a flush that discarded an unopened group
        req.flushing.discard((stage.name, ev.prefix))
        if rep.replay:
            self._drop_log(req, (stage.name, ev.prefix))
        if ev.status == "ok" and stage.fanout is not None:
            self._open_groups(stage.fanout, ev.prefix)
        self._release(self.topo.fold_loc[stage.name], ev.prefix)

    # -- items, joins, groups ------------------------------------------------------------------

    def _ack(self, stage: StagePlan, anc: Ancestry, status: Status, error: ErrorInfo | None) -> None:
        if status == "failed":
            self._fail_request(anc[0], error)
            return
        if status == "ok" and stage.fanout is not None and stage.operator is None:
            self._open_groups(stage.fanout, anc, self.fused.get(stage.name))
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
            self._watch(self.topo.out_loc[src], key, self._give_up[(c.name, src)])

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
                self._story.append((anc[0], c.name, anc, "give-up", None, src))
                del join.pending[anc]
                self._release(self.topo.in_loc[c.name], anc)

    def _open_groups(self, level: str, prefix: Ancestry, fused: str | None = None) -> None:
        for name in self.aggregates_over.get(level, ()):
            if name == fused:
                continue  # folded by the fan-out's replica: its result came from there
            req = self.requests.get(prefix[0])
            if req is None:
                return
            stage = self.stages[name]
            req.opened.add((name, prefix))
            self._hold(self.topo.fold_loc[name], prefix)
            self._watch(self.topo.in_loc[name], prefix, self._close_group[name])
            rid = self._group_replica(stage, prefix, "open")
            if rid is None:
                self._park(stage, prefix, _OpenGroup(name, prefix))
            else:
                self._out.append(Open(rid, name, prefix))

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
            elif req.logs:
                self._drop_log(req, key)  # discarded: nothing to rebuild
            rid = self._group_replica(stage, prefix, "flush" if opened else "discard")
            if rid is None:
                self._park(stage, prefix, _FlushGroup(stage.name, prefix, opened))
            else:
                self._out.append(Flush(rid, stage.name, prefix, opened))
                if not opened:
                    # A discard is not waited for: the request may end before its FlushDone comes.
                    self.replicas[rid].groups.discard(prefix)
                    self._unpin(stage.name, prefix)
        # An opened group keeps its fold pointstamp until the replica reports FlushDone.

    def _group_replica(self, stage: StagePlan, prefix: Ancestry, what: Happening) -> int | None:
        """The live replica holding ``stage``'s group ``prefix`` (which now holds it), if any."""
        rid = self.slots[stage.name].get(self._slot(stage, prefix))
        self._story.append((prefix[0], stage.name, prefix, what, rid, None))
        if rid is not None:
            self.replicas[rid].groups.add(prefix)
        return rid

    def _park(self, stage: StagePlan, anc: Ancestry, entry: Parked) -> None:
        """Keep keyed work for the slot's next replica (its last one died)."""
        self._story.append((anc[0], stage.name, anc, "park", None, None))
        # The slot of the group (an item's ancestry is longer than its group's prefix).
        slot = self._slot(stage, anc[: 1 + len(stage.route_key or ())])
        if self._source is not None and type(entry) is _Work:
            self._queued_by_source(entry)
        self.parked.setdefault((stage.name, slot), deque()).append(entry)

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
                self._watch(self.topo.in_loc[stage.name], prefix, self._close_group[stage.name])
        self._route(stage, _Work(anc, full))

    def _route(self, stage: StagePlan, work: _Work) -> None:
        if stage.route_key is not None:
            prefix = work.ancestry[: 1 + len(stage.route_key)]
            rid = self.slots[stage.name].get(self._slot(stage, prefix))
            if rid is None:  # the slot's replica is (re)starting
                self._park(stage, work.ancestry, work)
                return
            rep = self.replicas[rid]
            rep.groups.add(prefix)
            if rep.credits > 0 and work.ancestry[0] not in self.paused:
                self._invoke(rep, work)
            else:
                if self._source is not None:
                    self._queued_by_source(work)
                rep.queue.append(work)
            return
        if self.pin_requests and self.count[stage.name] > 1:
            rid = self.slots[stage.name].get(self._slot(stage, work.ancestry[:1]))
            if rid is None:
                self._park(stage, work.ancestry, work)
            elif self.replicas[rid].credits > 0 and work.ancestry[0] not in self.paused:
                self._invoke(self.replicas[rid], work)
            else:
                self.replicas[rid].queue.append(work)
            return
        rep = None if work.ancestry[0] in self.paused else self._pick(stage)
        if rep is None:
            if self._source is not None:
                self._queued_by_source(work)
            self.stage_queue[stage.name].append(work)
        else:
            self._invoke(rep, work)

    def _queued_by_source(self, work: _Work) -> None:
        """``work``, caused by the paced invocation being routed, waits: count it against that."""
        source = self._source
        assert source is not None
        work.source = source
        source.queued += 1

    def _grant(self, work: _Work) -> None:
        """Credit for the paced invocation ``work``, so that what it may still send and what it
        caused that waits in the queues stay within the window; none for a paused request."""
        if work.replica < 0 or work.ancestry[0] in self.paused:
            return
        if work.granted < work.outputs:
            work.granted = work.outputs  # its replica ran past its credit: it does not pace
        window, credit = self.fanout_window, self.fanout_credit
        assert window is not None
        while work.granted - work.outputs + work.queued <= window - credit:
            work.granted += credit
            rep = self.replicas[work.replica]
            self._out.append(Grant(work.replica, rep.stage, work.ancestry))
            if work.lent:  # it runs again: its credit comes back to it
                work.lent = False
                rep.credits -= 1

    def _lend(self, work: _Work) -> None:
        """The paced invocation ``work`` has sent all it may and waits for credit: its replica
        may run other work in its place meanwhile."""
        rep = self.replicas[work.replica]
        work.lent = True
        rep.credits += 1
        if rep.queue or self.stage_queue[rep.stage]:
            self._feed(rep)

    def _pick(self, stage: StagePlan) -> _Replica | None:
        slots = self.slots[stage.name]
        if len(slots) == 1:
            for r in slots.values():
                rep = self.replicas[r]
                return rep if rep.credits > 0 and rep.state == "ready" else None
        ready = [rep for r in slots.values()
                 if (rep := self.replicas[r]).credits > 0 and rep.state == "ready"]
        if not ready:
            return None
        if len(ready) == 1:
            return ready[0]
        a, b = self._rng.sample(ready, 2)
        return a if len(a.inflight) <= len(b.inflight) else b

    def _invoke(self, rep: _Replica, work: _Work) -> None:
        rep.credits -= 1
        anc = work.ancestry
        rep.inflight[(anc[0], anc)] = work
        if rep.replay:
            self._log_input(rep.stage, work)
        self._out.append(Invoke(rep.id, rep.stage, anc, work.args))
        if rep.stage in self._paced:
            work.replica = rep.id
            work.granted = self.fanout_window  # type: ignore[assignment]
        source = work.source
        if source is not None:  # it left the queue: its fan-out may get credit
            work.source = None
            source.queued -= 1
            self._grant(source)

    def _feed(self, rep: _Replica) -> None:
        """Give a replica with free credits the work waiting for it."""
        while rep.credits > 0:
            if rep.queue and rep.state in ("ready", "draining"):
                queue = rep.queue  # keyed work (a draining replica's own groups' too)
            elif rep.state == "ready":
                queue = self.stage_queue[rep.stage]
            else:
                return
            work = queue.pop(self.paused)
            if work is None:
                return
            if work.ancestry[0] in self.requests:
                self._invoke(rep, work)

    def _slot(self, stage: StagePlan, prefix: Ancestry) -> int:
        """The slot a group is pinned to (see "Rescaling"), else rendezvous hashing: the slot
        with the highest hash of (stage, key, slot), over the stage's slots now."""
        if self.pins:
            pin = self.pins.get((stage.name, prefix))
            if pin is not None:
                return pin
        n = self.count[stage.name]
        if n == 1:
            return 0
        return _rendezvous(stage.name, prefix, n)

    # -- progress ------------------------------------------------------------------------------

    def _hold(self, loc: int, anc: Ancestry) -> None:
        if anc[0] in self.requests:
            self.progress.hold(loc, anc)

    def _release(self, loc: int, anc: Ancestry) -> None:
        if anc[0] in self.requests:
            self._fired.extend(self.progress.release(loc, anc))

    def _watch(self, target: int, prefix: Ancestry, action: _CloseGroup | _GiveUp) -> None:
        req = self.requests[prefix[0]]
        req.watchers.setdefault((target, prefix), []).append(action)
        if self.progress.watch(target, prefix):
            self._fired.append(Unreachable(target, prefix))

    def _pump(self) -> None:
        while self._fired:
            ev = self._fired.popleft()
            if type(ev) is RequestIdle:
                if ev.request in self.requests and self.progress.holds(ev.request) == 0:
                    self._story.append((ev.request, None, None, "finish", None, None))
                    self._out.append(Finish(ev.request))
                    self._forget(ev.request)
                continue
            req = self.requests.get(ev.prefix[0])
            if req is None:
                continue
            for action in req.watchers.pop((ev.target, ev.prefix), ()):
                if type(action) is _GiveUp:
                    self._gone(self.stages[action.consumer], action.source, ev.prefix)
                else:
                    self._close(self.stages[action.stage], ev.prefix)

    # -- request endings -----------------------------------------------------------------------

    def _fail_request(self, request: int, error: ErrorInfo | None) -> None:
        if request not in self.requests:
            return
        if error is None:
            self._story.append((request, None, None, "fail", None, None))
        else:
            self._story.append((request, error.stage, (request, *error.ancestry.values()), "fail",
                                None, error.detail))
        self._out.append(Finish(request, error))
        self._drop_request(request)

    def _drop_request(self, request: int) -> None:
        for rep in self.replicas.values():
            if rep.state == "dead":
                continue
            mine = [k for k in rep.inflight if k[0] == request]
            held = any(g[0] == request for g in rep.groups)
            if mine or held:
                self._story.append((request, rep.stage, (request,), "abort", rep.id, None))
                self._out.append(Abort(rep.id, request))
            rep.groups = {g for g in rep.groups if g[0] != request}
            rep.queue.discard(request)
        for queue in self.stage_queue.values():
            queue.discard(request)
        for key, parked in list(self.parked.items()):  # work and group messages for a dead slot
            kept = deque(e for e in parked
                         if (e.ancestry if type(e) is _Work else e.prefix)[0] != request)
            if len(kept) != len(parked):
                if kept:
                    self.parked[key] = kept
                else:
                    del self.parked[key]
        self._forget(request)

    def _forget(self, request: int) -> None:
        req = self.requests.pop(request, None)
        self.paused.discard(request)
        if self._pins_of:
            for key in self._pins_of.pop(request, ()):
                del self.pins[key]
        if req is not None and req.logs:
            self.replay_buffered -= sum(len(log.inputs) for log in req.logs.values())
        self.progress.forget(request)

    @staticmethod
    def _named(levels: list[str], anc: Ancestry) -> dict[str, int]:
        return dict(zip(levels, anc[1:]))
