"""Request timelines: when each item entered and left each stage, per request.

The router (and the in-process executor) sees every item move: it dispatches an invocation to a
replica, reads each output the replica produces, then the invocation's acknowledgement; for an
aggregate it sends a group's flush and reads the group's result and its FLUSH_DONE. Where it
sees one of those, it records the moment in the request's ``Recording``: the time
(``perf_counter``) in an array of doubles, the kind, the status and the replica id packed into
one integer in an array of integers, and the ancestry tuple (the router's own, not a copy) in a
list. Nothing the garbage collector tracks is allocated per moment, so recording gives it no
more work; the invocations, their stages, the pairing of dispatches with acknowledgements and the offsets from
the request's start are worked out only when someone asks for the timeline (``timeline_json``).

Memory is bounded twice: a ``TimelineRecorder`` keeps the ``requests`` most recent requests'
recordings (an older one is forgotten when a newer one starts), and a recording holds at most
``entries`` moments; past that it records nothing more of its request and says ``truncated``.
With ``every`` above 1 it records one request in ``every`` (sampling under heavy load); with
``requests=0`` it records nothing at all, and the router's per-item cost is one test of an
empty dict.
"""

from __future__ import annotations

import time
from array import array
from typing import Any, Callable

from altoflow.compiler.plan import Plan

# A moment's kind (the low bits of its code).
DISPATCH = 0  # the router sent the invocation to its replica (in-process: the call starts)
OUTPUT = 1  # the replica produced one output item of the stage
ACK = 2  # the invocation is over; the moment's status says how (ok, dropped, failed)
FLUSH = 3  # an aggregate group is complete: the router told its replica to emit the result
FLUSH_DONE = 4  # ... and the replica has emitted it

DEFAULT_REQUESTS = 100
"""Requests whose timelines are kept by default (``altoflow serve --timeline-requests``)."""

DEFAULT_ENTRIES = 5000
"""Recorded moments per request by default (``--timeline-entries``): about three per item (its
dispatch, its output, its acknowledgement), so 5000 covers a request of some 1600 items. A
moment costs 24 bytes: a double, an integer and a reference to the ancestry the runtime holds
anyway."""

STATUSES = ("ok", "dropped", "failed")  # an ACK's or FLUSH_DONE's status, by its wire code
STATUS_CODES = {name: n for n, name in enumerate(STATUSES)}


def code(kind: int, replica: int, status: int = 0) -> int:
    """A moment's kind, status and replica id as one integer (``Recording.codes``)."""
    return kind | status << 3 | replica << 5


class Recording:
    """One request's recorded moments, in the order the router saw them: ``times[i]``,
    ``codes[i]`` (``code(kind, replica, status)``) and ``ancestries[i]``."""

    __slots__ = ("ancestries", "codes", "key", "limit", "name", "outcome", "started", "ended",
                 "times", "truncated")

    def __init__(self, key: int, name: str, limit: int, started: float | None = None) -> None:
        self.key = key  # the runtime's own number for the request
        self.name = name  # its request id (X-Request-Id)
        self.limit = limit
        self.started = time.perf_counter() if started is None else started
        self.ended: float | None = None
        self.outcome: str | None = None  # done, error or cancelled, once it ended
        self.truncated = False
        self.times = array("d")
        self.codes = array("q")
        self.ancestries: list[tuple] = []

    def __len__(self) -> int:
        return len(self.ancestries)

    def add(self, t: float, code: int, ancestry: tuple) -> None:
        """Record one moment (``code(kind, replica, status)``), unless the limit is reached."""
        ancestries = self.ancestries
        if len(ancestries) < self.limit:
            self.times.append(t)
            self.codes.append(code)
            ancestries.append(ancestry)
        else:
            self.truncated = True

    def entries(self) -> list[tuple[float, int, int, int, tuple]]:
        """The moments as (time, kind, replica, status, ancestry)."""
        return [(t, c & 7, c >> 5, c >> 3 & 3, a)
                for t, c, a in zip(self.times, self.codes, self.ancestries)]

    def end(self, outcome: str, t: float | None = None) -> None:
        if self.ended is None:
            self.ended = time.perf_counter() if t is None else t
            self.outcome = outcome


class TimelineRecorder:
    """The recordings of the ``requests`` most recent requests, each of at most ``entries``
    moments; one request in ``every`` is recorded. ``live`` maps the runtime's number for each
    request being recorded to its recording: the router appends to it, and tests it for
    emptiness first, so a recorder that records nothing costs next to nothing."""

    def __init__(self, requests: int = DEFAULT_REQUESTS, entries: int = DEFAULT_ENTRIES,
                 every: int = 1) -> None:
        if requests < 0:
            raise ValueError(f"timeline requests must be 0 (record none) or more, not {requests}")
        if entries < 1:
            raise ValueError(f"timeline entries must be at least 1 per request, not {entries}")
        if every < 1:
            raise ValueError(f"timeline sampling records one request in N: N must be at least 1, "
                             f"not {every}")
        self.requests = requests
        self.entries = entries
        self.every = every
        self.live: dict[int, Recording] = {}
        self._kept: dict[str, Recording] = {}  # by request id, oldest first
        self._seen = 0

    def begin(self, key: int, name: str, started: float | None = None) -> Recording | None:
        """A request starts: its recording, or None when this one is not recorded."""
        if not self.requests:
            return None
        self._seen += 1
        if (self._seen - 1) % self.every:
            return None
        rec = Recording(key, name, self.entries, started)
        self.live[key] = rec
        kept = self._kept
        if name in kept:  # a request id given twice: the newer request's timeline wins
            del kept[name]
        kept[name] = rec
        if len(kept) > self.requests:
            old = kept.pop(next(iter(kept)))
            if self.live.get(old.key) is old:  # still running: it stops being recorded
                del self.live[old.key]
        return rec

    def record(self, key: int, t: float, code: int, ancestry: tuple) -> None:
        """Record a moment of request ``key`` (``code(kind, replica, status)``) if it is being
        recorded."""
        rec = self.live.get(key)
        if rec is not None:  # Recording.add, inlined: this runs a few times per item
            ancestries = rec.ancestries
            if len(ancestries) < rec.limit:
                rec.times.append(t)
                rec.codes.append(code)
                ancestries.append(ancestry)
            else:
                rec.truncated = True

    def end(self, key: int, outcome: str, t: float | None = None) -> None:
        rec = self.live.pop(key, None)
        if rec is not None:
            rec.end(outcome, t)

    def get(self, name: str) -> Recording | None:
        return self._kept.get(name)

    def names(self) -> list[str]:
        """The request ids whose timelines are kept, oldest first."""
        return list(self._kept)

    def missing(self, name: str) -> str:
        """Why there is no timeline for ``name``: the message of a 404."""
        if not self.requests:
            return (f"no timeline for request {name!r}: this server records none (it was started "
                    f"with --timeline-requests 0)")
        sampled = f", and records one request in {self.every} (--timeline-every)" if self.every > 1 else ""
        return (f"no timeline for request {name!r}: it is not a request of this server, or it is "
                f"older than the {self.requests} most recent ones it keeps (--timeline-requests)"
                f"{sampled}; the id is the X-Request-Id header of POST /v1/run's answer")


def timeline_json(rec: Recording, plan: Plan,
                  replica_of: Callable[[int], tuple[str, int]]) -> dict[str, Any]:
    """The JSON document of a recording (``GET /v1/requests/{id}/timeline``; the shape is in
    docs/serving.md). ``replica_of`` maps the runtime's replica ids to (stage, replica slot).

    Each invocation is one dispatch matched with its acknowledgement (same replica, stage and
    ancestry); each output goes to the invocation it came from: the one with its ancestry (a
    map) or with its ancestry less the last index (a fan-out), else the group being flushed
    whose prefix that is. Times are seconds from the request's start.
    """
    stages = {s.name: s for s in plan.stages}
    start = rec.started

    def off(t: float) -> float:
        return round(t - start, 6)

    def named(levels: list[str], anc: tuple) -> dict[str, int]:
        return dict(zip(levels, anc[1:]))

    invocations: list[dict[str, Any]] = []
    calls: dict[tuple, dict[str, Any]] = {}
    groups: dict[tuple, dict[str, Any]] = {}
    for t, kind, rid, status, anc in rec.entries():
        stage, slot = replica_of(rid)
        sp = stages[stage]
        if kind == DISPATCH or kind == FLUSH:
            inv = {"stage": stage, "kind": "call" if kind == DISPATCH else "group",
                   "replica": slot,
                   "ancestry": named(sp.levels_in if kind == DISPATCH else sp.route_key or [], anc),
                   "start_s": off(t), "end_s": None, "outputs_s": [], "status": None}
            (calls if kind == DISPATCH else groups)[(rid, stage, anc)] = inv
            invocations.append(inv)
        elif kind == ACK or kind == FLUSH_DONE:
            inv = (calls if kind == ACK else groups).pop((rid, stage, anc), None)
            if inv is not None:
                inv["end_s"], inv["status"] = off(t), STATUSES[status]
        else:  # OUTPUT
            key, parent = (rid, stage, anc), (rid, stage, anc[:-1])
            inv = calls.get(key) or calls.get(parent) or groups.get(key) or groups.get(parent)
            if inv is None:  # an early-decided group's result, emitted by one of its calls
                inv = {"stage": stage, "kind": "emit", "replica": slot,
                       "ancestry": named(sp.levels_out, anc), "start_s": off(t), "end_s": off(t),
                       "outputs_s": [], "status": "ok"}
                invocations.append(inv)
            inv["outputs_s"].append(off(t))
    return {
        "request_id": rec.name,
        "started_at": round(time.time() - (time.perf_counter() - start), 6),
        "duration_s": None if rec.ended is None else off(rec.ended),
        "outcome": rec.outcome,
        "truncated": rec.truncated,
        "stages": [{"name": s.name, "kind": s.kind, "replicas": s.replicas,
                    "levels_in": s.levels_in, "levels_out": s.levels_out} for s in plan.stages],
        "invocations": invocations,
    }


def plan_replicas(plan: Plan) -> Callable[[int], tuple[str, int]]:
    """``replica_of`` for the in-process executor, whose replica ids count the plan's replicas
    in stage order (``runtime.local``)."""
    replicas = [(s.name, slot) for s in plan.stages for slot in range(s.replicas)]
    return replicas.__getitem__
