"""Progress tracking: when can a group close, when can a join give up, when is a request done.

Theory of operation
-------------------
Work in flight is a multiset of *pointstamps*: (location, ancestry). A location is a stage's
input (items queued for it, running in it, or waiting in its join buffer) or, for an aggregate
stage, its fold (a group that is open). The ancestry starts with the request id, then one index
per open level. Whoever creates work ``hold``s its pointstamp before the work that caused it is
``release``d, so the multiset never looks empty while something is still going on.

The question everything reduces to is "could-result-in" (Naiad's, made simple by one central
observer): can work at (S, a) still produce something at location T with ancestry inside the
prefix X? Along any path from S to T ancestries only grow (fan-out appends an index) or shrink
(an aggregate cuts the stack), and an index is never changed. So if ``d`` is the smallest stack
depth on any path from S to T, the first ``d`` indices of ``a`` survive the trip unchanged and
the rest may become anything. Work at (S, a) can therefore reach (T, X) only if
``a[:k] == X[:k]`` with ``k = min(d, len(X))``; it is conservative (a path may exist in the graph
that no item takes) and never wrong.

For each *target* location T (an aggregate's input, or the output of a stage that feeds a join)
the tracker keeps a counter per key ``a[:1 + k]`` (request id included). X is unreachable when
the counters of all its prefixes ``X[:1 + j]`` are zero. A *watch* on (T, X) is reported once,
by the ``release`` that makes it unreachable. Since the graph is a DAG and a target only waits
on locations upstream of it, waiting can never be circular.

This module is pure: no sockets, no asyncio, no clock. The reference executor and the router
feed it events and act on what it returns.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from altoflow.compiler.plan import Plan

Ancestry = tuple[int, ...]  # (request id, index, index, ...)


@dataclass(frozen=True)
class Topology:
    """The location graph of a plan: stack depth of each location and where work can flow."""

    names: tuple[str, ...]  # location names, e.g. "bm25" (input) and "bm25.fold"
    depth: tuple[int, ...]
    succ: tuple[tuple[int, ...], ...]
    in_loc: dict[str, int]
    out_loc: dict[str, int]
    fold_loc: dict[str, int]
    targets: dict[int, int]  # target location -> depth of the prefixes asked about it

    @classmethod
    def from_plan(cls, plan: Plan) -> "Topology":
        names: list[str] = []
        depth: list[int] = []
        in_loc: dict[str, int] = {}
        fold_loc: dict[str, int] = {}
        for s in plan.stages:
            in_loc[s.name] = len(names)
            names.append(s.name)
            depth.append(len(s.levels_in))
            if s.is_aggregate:
                assert s.route_key is not None
                fold_loc[s.name] = len(names)
                names.append(f"{s.name}.fold")
                depth.append(len(s.route_key))
        out_loc = {s.name: fold_loc.get(s.name, in_loc[s.name]) for s in plan.stages}
        succ: list[list[int]] = [[] for _ in names]
        for s in plan.stages:
            if s.name in fold_loc:
                succ[in_loc[s.name]].append(fold_loc[s.name])
            for c in s.consumers:
                succ[out_loc[s.name]].append(in_loc[c])
        targets: dict[int, int] = {}
        for s in plan.stages:
            if s.is_aggregate:
                targets[in_loc[s.name]] = len(s.route_key or [])
            if len(s.inputs) > 1:
                for i in s.inputs:
                    targets[out_loc[i]] = len(plan.stage(i).levels_out)
        return cls(
            names=tuple(names),
            depth=tuple(depth),
            succ=tuple(tuple(x) for x in succ),
            in_loc=in_loc,
            out_loc=out_loc,
            fold_loc=fold_loc,
            targets=targets,
        )

    def reach(self) -> list[list[tuple[int, int]]]:
        """For each location S: the targets T reachable from it, with ``min(d(S, T), depth(T))``."""
        n = len(self.names)
        # d[s][t]: smallest depth on a path from s to t (locations are in topological order,
        # because plan stages are, and a fold follows its stage's input).
        d: list[dict[int, int]] = [dict() for _ in range(n)]
        for s in reversed(range(n)):
            if s in self.targets:
                d[s][s] = self.depth[s]
            for nxt in self.succ[s]:
                for t, dt in d[nxt].items():
                    v = min(self.depth[s], dt)
                    if d[s].get(t, v + 1) > v:
                        d[s][t] = v
        return [sorted((t, min(dt, self.targets[t])) for t, dt in d[s].items()) for s in range(n)]


# Slotted, not frozen, like the core's events: one is built per request or group (core.py).
@dataclass(slots=True)
class Unreachable:
    """Nothing in flight can reach ``target`` with an ancestry inside ``prefix`` any more."""

    target: int
    prefix: Ancestry


@dataclass(slots=True)
class RequestIdle:
    """Request ``request`` has no work in flight at all: it is done."""

    request: int


class _RequestState:
    __slots__ = ("counts", "holds", "watch_index", "watches")

    def __init__(self) -> None:
        self.holds = 0
        self.counts: dict[tuple[int, Ancestry], int] = {}
        self.watches: set[tuple[int, Ancestry]] = set()
        # (target, key) -> watched prefixes that start with key
        self.watch_index: dict[tuple[int, Ancestry], set[Ancestry]] = defaultdict(set)


class Progress:
    """The pointstamp multiset and its watches, for any number of requests."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._reach = topology.reach()
        self._requests: dict[int, _RequestState] = {}

    # -- events in -------------------------------------------------------------------------

    def hold(self, loc: int, ancestry: Ancestry) -> None:
        req = self._requests.get(ancestry[0])
        if req is None:
            req = self._requests[ancestry[0]] = _RequestState()
        req.holds += 1
        counts = req.counts
        for target, k in self._reach[loc]:
            key = (target, ancestry[: 1 + k])
            counts[key] = counts.get(key, 0) + 1

    def release(self, loc: int, ancestry: Ancestry) -> list[Unreachable | RequestIdle]:
        req = self._requests.get(ancestry[0])
        if req is None or req.holds <= 0:
            raise ValueError(
                f"release of {self.topology.names[loc]} {ancestry} that was never held"
            )
        req.holds -= 1
        out: list[Unreachable | RequestIdle] = []
        counts = req.counts
        for target, k in self._reach[loc]:
            key = (target, ancestry[: 1 + k])
            left = counts[key] - 1
            if left:
                counts[key] = left
                continue
            del counts[key]
            for prefix in list(req.watch_index.get(key, ())):
                if self._clear(req, target, prefix):
                    self._unwatch(req, target, prefix)
                    out.append(Unreachable(target, prefix))
        if req.holds == 0:
            out.append(RequestIdle(ancestry[0]))
        return out

    def watch(self, target: int, prefix: Ancestry) -> bool:
        """Ask to be told when (target, prefix) becomes unreachable; True if it already is."""
        if target not in self.topology.targets:
            raise ValueError(f"{self.topology.names[target]} is not a watchable location")
        req = self._requests.get(prefix[0])
        if req is None or self._clear(req, target, prefix):
            return True
        if (target, prefix) not in req.watches:
            req.watches.add((target, prefix))
            for j in range(len(prefix)):
                req.watch_index[(target, prefix[: 1 + j])].add(prefix)
        return False

    def forget(self, request: int) -> None:
        """Drop everything about a request (it failed or was cancelled)."""
        self._requests.pop(request, None)

    # -- queries ---------------------------------------------------------------------------

    def reachable(self, target: int, prefix: Ancestry) -> bool:
        req = self._requests.get(prefix[0])
        return req is not None and not self._clear(req, target, prefix)

    def holds(self, request: int) -> int:
        req = self._requests.get(request)
        return 0 if req is None else req.holds

    def requests(self) -> Iterable[int]:
        return self._requests.keys()

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _clear(req: _RequestState, target: int, prefix: Ancestry) -> bool:
        counts = req.counts
        return not any((target, prefix[: 1 + j]) in counts for j in range(len(prefix)))

    @staticmethod
    def _unwatch(req: _RequestState, target: int, prefix: Ancestry) -> None:
        req.watches.discard((target, prefix))
        for j in range(len(prefix)):
            key = (target, prefix[: 1 + j])
            waiting = req.watch_index.get(key)
            if waiting is not None:
                waiting.discard(prefix)
                if not waiting:
                    del req.watch_index[key]
