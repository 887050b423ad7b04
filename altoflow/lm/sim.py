"""A simulated LM engine: real streaming, written-down timing, deterministic text.

It is what the benchmarks and the offline demo run against, so that only orchestration differs
between the systems compared and nothing needs a GPU. It always says that it is simulated: its
name is ``altoflow-simulated``, ``LM.simulated`` is true, it logs a warning when created, and its
server (:mod:`altoflow.lm.sim_server`) marks every response.

Theory of operation
-------------------
The timing model (:class:`TimingModel`) is that of an engine with continuous batching:

* a request is admitted when fewer than ``max_batch`` requests are running (else it queues);
* its first token comes ``ttft_s + prefill_s_per_token * uncached_prompt_tokens`` after
  admission, where prompt tokens found in the prefix cache (if one is configured) cost nothing;
* after that it gets one token per decode step, and a decode step takes
  ``time_per_token_s * (1 + batch_slowdown * (B - 1))`` for a batch of ``B`` running requests.

So a request alone that writes ``n`` tokens takes ``ttft + (n - 1) * time_per_token_s``.
:class:`SimCore` is that model as a pure state machine over a virtual clock (submit, abort and
advance to a time; it returns which tokens are due when), tested with no clock at all.

A deployment (:class:`Profile`) is a pool of such engines per LM stage (:class:`Pool`:
``engines`` cores, each with its own batch of at most ``max_batch`` and its own queue). A
request names its pool by its model name, ``"sim/<pool>"``; :class:`SimPool` puts it on the
least loaded engine of that pool, where it stays. :data:`UNBOUNDED` (the default) is one engine
for every request, the engine as it was before profiles; :data:`PAPER` is the ALTO paper's
deployment. Pools share nothing, so contention is only within a pool, as between separate
vLLM instances.

:class:`SimulatedLM` is the thin shell: it reads the real clock, sleeps until its pool's next
deadline and hands the due tokens to the waiting streams. It needs no background task: every
waiting stream drives its pool itself, so there is nothing to start or to shut down. Streams
on several threads' event loops (or under trio) may share one engine: its pools change under a
lock, and a stream of another loop is woken through that loop's ``call_soon_threadsafe``.

One simulated token is one word (with its separator). The ALTO paper reports output lengths in
words, so the calibration below is in words, and ``max_tokens`` counts words.

Calibration
-----------
The ALTO paper's Table 1 (FacTool pipeline at 15 requests/s) gives, per LM call: a response of
62.5 ± 57.2 words in about 1.3 s; 3.3 ± 1.8 claims per response of 9.8 ± 3.5 words in about
0.4 s each; 2.5 ± 1.3 search queries per claim of 5.5 ± 3.1 words in about 0.33 s each.
Solving ``t = ttft + (words - 1) * tpot`` for the first two gives ``tpot = 0.9 s / 52.7 words
= 17.1 ms`` and ``ttft = 0.25 s``, and the third then comes out at 0.327 s, as in the table.
The defaults split that TTFT into 0.23 s fixed and 0.2 ms per prompt token (about 0.02 s for
the ~100-word prompts of the pipeline). The output lengths are drawn from log-normal
distributions with the table's means and standard deviations (:data:`RESPONSE`,
:data:`CLAIMS`, :data:`QUERIES`). ``batch_slowdown`` (0.8% per extra running request) and
``max_batch`` (256, vLLM's default number of running sequences) are not from the paper: they
are rough figures for a 7B model under vLLM on one A100, and the table's times are reached at
low concurrency. The counts of :data:`PAPER` (engines per stage, retriever replicas) are the
paper's. docs/simulator.md has the full account, and what each profile does at 15 requests/s.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import heapq
import itertools
import logging
import math
import random
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, NamedTuple

import anyio

from ._base import LM, ChatMessage, Prompt, Sampling, normalize_prompt, prompt_text

__all__ = [
    "CLAIMS",
    "DEFAULT_POOL",
    "DEFAULT_RULES",
    "PAPER",
    "POOL_PREFIX",
    "PROFILES",
    "QUERIES",
    "RESPONSE",
    "SIMULATED_MODEL_NAME",
    "Finished",
    "LengthDist",
    "OutputShape",
    "Pool",
    "PoolStats",
    "Profile",
    "ShapeRule",
    "SimCore",
    "SimPlan",
    "SimPool",
    "SimStats",
    "SimulatedLM",
    "TimingModel",
    "TokenDue",
    "UNBOUNDED",
    "UnknownPoolError",
    "get_profile",
]

log = logging.getLogger("altoflow.lm.sim")

#: The model name under which the simulated engine appears everywhere.
SIMULATED_MODEL_NAME = "altoflow-simulated"


# -- the timing model ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimingModel:
    """How long the simulated engine takes; the defaults are calibrated to ALTO's Table 1.

    See the module's docstring for the model and the calibration.
    """

    #: Fixed part of the time to first token (scheduling, the first forward pass), seconds.
    ttft_s: float = 0.23
    #: Prefill cost per prompt token that is not in the prefix cache, seconds.
    prefill_s_per_token: float = 0.0002
    #: Duration of one decode step with one running request, seconds.
    time_per_token_s: float = 0.0171
    #: Relative slowdown of a decode step per extra running request.
    batch_slowdown: float = 0.008
    #: Requests running at once; more wait in a queue.
    max_batch: int = 256
    #: Size of the prefix cache in blocks of ``block_tokens`` prompt tokens; 0 turns it off.
    prefix_cache_blocks: int = 0
    #: Prompt tokens per prefix-cache block (only whole blocks are cached, as in vLLM).
    block_tokens: int = 16

    def __post_init__(self) -> None:
        for name in ("ttft_s", "prefill_s_per_token", "time_per_token_s", "batch_slowdown"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"TimingModel.{name} must be a finite number >= 0, got {value!r}")
        for name, low in (("max_batch", 1), ("prefix_cache_blocks", 0), ("block_tokens", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"TimingModel.{name} must be an integer >= {low}, got {value!r}")

    def step_s(self, batch: int) -> float:
        """Duration of one decode step with ``batch`` running requests."""
        return self.time_per_token_s * (1.0 + self.batch_slowdown * max(batch - 1, 0))

    def prefill_s(self, uncached_prompt_tokens: int) -> float:
        """Time from admission to the first token."""
        return self.ttft_s + self.prefill_s_per_token * uncached_prompt_tokens

    def duration_s(self, prompt_tokens: int, output_tokens: int, batch: int = 1) -> float:
        """Time a request takes from admission to its last token at a constant batch size."""
        if output_tokens <= 0:
            return self.prefill_s(prompt_tokens)
        return self.prefill_s(prompt_tokens) + (output_tokens - 1) * self.step_s(batch)

    def scaled(self, factor: float) -> TimingModel:
        """The same model running ``1/factor`` times faster (``factor=0.01``: 100x faster)."""
        if not factor > 0:
            raise ValueError(f"the time scale must be > 0, got {factor!r}")
        return replace(
            self,
            ttft_s=self.ttft_s * factor,
            prefill_s_per_token=self.prefill_s_per_token * factor,
            time_per_token_s=self.time_per_token_s * factor,
        )


# -- the pure core: continuous batching over a virtual clock ----------------------------------


@dataclass(frozen=True, slots=True)
class TokenDue:
    """Instruction: token ``index`` of request ``rid`` was generated at time ``at``."""

    rid: int
    index: int
    at: float


@dataclass(frozen=True, slots=True)
class Finished:
    """Instruction: request ``rid`` generated its last token (``tokens`` in all) at ``at``."""

    rid: int
    tokens: int
    at: float


class SimStats(NamedTuple):
    submitted: int
    finished: int
    aborted: int
    running: int
    waiting: int
    tokens: int
    prefix_cache_hit_tokens: int
    #: Requests that had to wait for a place in the batch (a sign of contention).
    queued: int = 0


@dataclass(slots=True)
class _Seq:
    rid: int
    n_out: int
    prompt: tuple[str, ...]
    emitted: int = 0
    first_at: float = math.inf


class _PrefixCache:
    """LRU of prompt blocks, keyed by the chain of blocks before them (as vLLM hashes them)."""

    def __init__(self, capacity: int, block: int) -> None:
        self._capacity = capacity
        self._block = block
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def lookup_and_insert(self, prompt: tuple[str, ...]) -> int:
        """Return how many leading prompt tokens were cached, then cache the prompt's blocks."""
        if self._capacity == 0:
            return 0
        key = 0
        cached = 0
        matching = True
        for start in range(0, len(prompt) - self._block + 1, self._block):
            key = hash((key, prompt[start : start + self._block]))
            if matching and key in self._blocks:
                cached += self._block
            else:
                matching = False
            self._blocks[key] = None
            self._blocks.move_to_end(key)
        while len(self._blocks) > self._capacity:
            self._blocks.popitem(last=False)
        return cached


class SimCore:
    """Continuous batching over a virtual clock: events in, due tokens out. No I/O, no clock.

    Times passed in must not go backwards. :meth:`next_deadline` says when something is next
    due; :meth:`advance` gives back everything that became due up to a time, including what
    fell due before a :meth:`submit` or :meth:`abort` at a later time.
    """

    def __init__(self, timing: TimingModel) -> None:
        self.timing = timing
        self._waiting: deque[_Seq] = deque()
        self._prefilling: dict[int, _Seq] = {}
        self._prefill_heap: list[tuple[float, int]] = []  # (first_at, rid); stale entries skipped
        self._decoding: dict[int, _Seq] = {}  # insertion order = order tokens come out in a step
        self._next_step_at: float | None = None
        self._cache = _PrefixCache(timing.prefix_cache_blocks, timing.block_tokens)
        self._now = -math.inf
        # What became due while handling a submit or an abort, given back by the next advance.
        self._due: list[TokenDue | Finished] = []
        self._submitted = self._finished = self._aborted = self._tokens = self._hits = 0
        self._queued = 0

    @property
    def running(self) -> int:
        return len(self._prefilling) + len(self._decoding)

    def stats(self) -> SimStats:
        return SimStats(
            submitted=self._submitted,
            finished=self._finished,
            aborted=self._aborted,
            running=self.running,
            waiting=len(self._waiting),
            tokens=self._tokens,
            prefix_cache_hit_tokens=self._hits,
            queued=self._queued,
        )

    def submit(self, rid: int, *, prompt: Sequence[str], n_out: int, now: float) -> None:
        """A request arrives at ``now`` with ``prompt`` tokens and will write ``n_out`` tokens."""
        if (
            rid in self._prefilling
            or rid in self._decoding
            or any(s.rid == rid for s in self._waiting)
        ):
            raise ValueError(f"request {rid} was already submitted")
        if n_out < 0:
            raise ValueError(f"n_out must be >= 0, got {n_out}")
        self._run_until(now, self._due)
        self._submitted += 1
        seq = _Seq(rid, n_out, tuple(prompt))
        if self.running < self.timing.max_batch:
            self._admit(seq, now)
        else:
            self._waiting.append(seq)
            self._queued += 1

    def abort(self, rid: int, now: float) -> bool:
        """Stop request ``rid``; returns False if it is not running or waiting (e.g. finished)."""
        self._run_until(now, self._due)
        if rid in self._decoding:
            del self._decoding[rid]
            if not self._decoding:
                self._next_step_at = None
        elif rid in self._prefilling:
            del self._prefilling[rid]  # its heap entry is skipped when it comes up
        else:
            for seq in self._waiting:
                if seq.rid == rid:
                    self._waiting.remove(seq)
                    break
            else:
                return False
        self._aborted += 1
        self._admit_waiting(now)
        return True

    def catch_up(self, now: float) -> None:
        """Run the model up to ``now``, keeping what fell due for the next :meth:`advance`.

        So that :attr:`load` is that of ``now``, as a pool needs before choosing an engine.
        """
        self._run_until(now, self._due)

    @property
    def load(self) -> int:
        """Requests on this engine: running and waiting."""
        return self.running + len(self._waiting)

    def next_deadline(self) -> float | None:
        """When the next token or admission is due, or None when nothing is running."""
        self._drop_stale()
        candidates = [t for t in (self._next_step_at,) if t is not None]
        if self._prefill_heap:
            candidates.append(self._prefill_heap[0][0])
        return min(candidates) if candidates else None

    def advance(self, now: float) -> list[TokenDue | Finished]:
        """Run the model up to ``now``; return what happened since the last call, in time order."""
        out, self._due = self._due, []
        self._run_until(now, out)
        return out

    # -- internals ---

    def _run_until(self, now: float, out: list[TokenDue | Finished]) -> None:
        if now < self._now:
            raise ValueError(f"time went backwards: {now} < {self._now}")
        self._now = now
        while True:
            self._drop_stale()
            t_prefill = self._prefill_heap[0][0] if self._prefill_heap else math.inf
            t_step = self._next_step_at if self._next_step_at is not None else math.inf
            t = min(t_prefill, t_step)
            if t > now:
                return
            if t_prefill <= t_step:
                _, rid = heapq.heappop(self._prefill_heap)
                self._first_token(self._prefilling.pop(rid), t, out)
            else:
                self._step(t, out)

    def _drop_stale(self) -> None:
        heap = self._prefill_heap
        while heap and heap[0][1] not in self._prefilling:
            heapq.heappop(heap)

    def _admit(self, seq: _Seq, now: float) -> None:
        cached = self._cache.lookup_and_insert(seq.prompt)
        self._hits += cached
        seq.first_at = now + self.timing.prefill_s(len(seq.prompt) - cached)
        self._prefilling[seq.rid] = seq
        heapq.heappush(self._prefill_heap, (seq.first_at, seq.rid))

    def _admit_waiting(self, now: float) -> None:
        while self._waiting and self.running < self.timing.max_batch:
            self._admit(self._waiting.popleft(), now)

    def _first_token(self, seq: _Seq, t: float, out: list[TokenDue | Finished]) -> None:
        if seq.n_out == 0:
            self._finish(seq, t, out)
            return
        out.append(TokenDue(seq.rid, 0, t))
        self._tokens += 1
        seq.emitted = 1
        if seq.emitted >= seq.n_out:
            self._finish(seq, t, out)
            return
        self._decoding[seq.rid] = seq
        if self._next_step_at is None:
            self._next_step_at = t + self.timing.step_s(self.running)

    def _step(self, t: float, out: list[TokenDue | Finished]) -> None:
        for seq in list(self._decoding.values()):
            out.append(TokenDue(seq.rid, seq.emitted, t))
            self._tokens += 1
            seq.emitted += 1
            if seq.emitted >= seq.n_out:
                del self._decoding[seq.rid]
                self._finish(seq, t, out)
        self._next_step_at = t + self.timing.step_s(self.running) if self._decoding else None

    def _finish(self, seq: _Seq, t: float, out: list[TokenDue | Finished]) -> None:
        out.append(Finished(seq.rid, seq.emitted, t))
        self._finished += 1
        self._admit_waiting(t)


# -- deployments: pools of engines, one pool per LM stage -------------------------------------


@dataclass(frozen=True, slots=True)
class Pool:
    """``engines`` engines serving one LM stage, each batching at most ``max_batch`` requests.

    ``max_batch=None`` takes the timing model's (``TimingModel.max_batch``), so that
    ``altoflow sim-lm --max-batch`` sets it for every pool of a profile.
    """

    engines: int = 1
    max_batch: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.engines, int) or self.engines < 1:
            raise ValueError(f"Pool.engines must be an integer >= 1, got {self.engines!r}")
        if self.max_batch is not None and (
            not isinstance(self.max_batch, int) or self.max_batch < 1
        ):
            raise ValueError(
                f"Pool.max_batch must be an integer >= 1 or None (the timing model's), "
                f"got {self.max_batch!r}"
            )

    def timing_of(self, timing: TimingModel) -> TimingModel:
        """The timing model of each of this pool's engines."""
        return timing if self.max_batch is None else replace(timing, max_batch=self.max_batch)


#: The prefix of a model name that picks a pool: model ``"sim/answer"`` runs on pool ``answer``.
POOL_PREFIX = "sim/"
#: The name under which a profile's default pool appears in statistics.
DEFAULT_POOL = "default"


class UnknownPoolError(ValueError):
    """A request named a pool that the profile does not have, or none where it must."""


@dataclass(frozen=True)
class Profile:
    """A simulated deployment: a pool of engines per LM stage, and replica counts for the rest.

    A request picks its pool by its model name, ``"sim/<pool>"`` (:meth:`pool_for`); a request
    that names no pool (any other model name) runs on ``default``, and is refused when
    ``default`` is None. A profile without pools runs every request on ``default``, whatever
    its model name. ``replicas`` are the replica counts of the pipeline's non-LM stages in the
    same deployment (retrievers, encoders), as data for a benchmark to pass to
    ``altoflow serve --replicas``; the simulator does not use them.
    """

    name: str
    pools: Mapping[str, Pool] = field(default_factory=dict)
    default: Pool | None = Pool()
    replicas: Mapping[str, int] = field(default_factory=dict)
    about: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "pools", MappingProxyType(dict(self.pools)))
        object.__setattr__(self, "replicas", MappingProxyType(dict(self.replicas)))
        for name in self.pools:
            if not name or "/" in name or name == DEFAULT_POOL:
                raise ValueError(
                    f"profile {self.name!r}: a pool is named by a non-empty word without '/' "
                    f"other than {DEFAULT_POOL!r}, got {name!r}"
                )
        if self.default is None and not self.pools:
            raise ValueError(f"profile {self.name!r} has neither pools nor a default pool")
        for stage, n in self.replicas.items():
            if not isinstance(n, int) or n < 1:
                raise ValueError(
                    f"profile {self.name!r}: replicas[{stage!r}] must be an integer >= 1, got {n!r}"
                )

    def models(self) -> list[str]:
        """The model names that pick a pool (what ``GET /v1/models`` lists)."""
        if not self.pools:
            return [SIMULATED_MODEL_NAME]
        named = [POOL_PREFIX + name for name in self.pools]
        return named if self.default is None else [SIMULATED_MODEL_NAME, *named]

    def pool_for(self, model: str | None) -> str:
        """The pool that a request for ``model`` runs on (:data:`DEFAULT_POOL` for the default).

        Raises :class:`UnknownPoolError` for ``"sim/<name>"`` when ``name`` is not a pool of a
        profile with pools, and for a model that names no pool when there is no default.
        """
        if not self.pools:
            return DEFAULT_POOL
        if model is not None and model.startswith(POOL_PREFIX):
            name = model[len(POOL_PREFIX) :]
            if name in self.pools:
                return name
            raise UnknownPoolError(
                f"the simulated profile {self.name!r} has no pool {name!r} (model {model!r}); "
                f"its models are {', '.join(map(repr, self.models()))}"
            )
        if self.default is None:
            raise UnknownPoolError(
                f"the simulated profile {self.name!r} has no default pool, so a request must "
                f"name its pool as the model, one of {', '.join(map(repr, self.models()))} "
                f"(got {model!r})"
            )
        return DEFAULT_POOL

    def pool(self, name: str) -> Pool:
        """The pool called ``name`` (:data:`DEFAULT_POOL` for the default one)."""
        if name == DEFAULT_POOL and self.default is not None:
            return self.default
        if name in self.pools:
            return self.pools[name]
        raise UnknownPoolError(
            f"the simulated profile {self.name!r} has no pool {name!r}; its pools are "
            f"{', '.join(map(repr, self.pool_names()))}"
        )

    def pool_names(self) -> list[str]:
        return [*self.pools, *([DEFAULT_POOL] if self.default is not None else [])]


#: Today's engine: one engine for every stage, batching up to the timing model's ``max_batch``.
UNBOUNDED = Profile(
    "unbounded",
    about="one engine for every request, as before profiles",
)

#: The ALTO paper's deployment of its FacTool pipeline (8 A100s running vLLM, measured at 15
#: requests/s): 2 instances for the answer, 2 for claim extraction, 3 for query generation; 4
#: BM25 replicas, 1 ColBERT query encoder, 4 rerankers. The counts are the paper's; the batch
#: limit is the timing model's (ours: vLLM's default of 256 running sequences).
#:
#: The other pools are ours, so that every example application runs on ``paper`` with eight
#: engines, as the paper's deployment has eight GPUs: the claim verifier's ``verdict`` 1 (the
#: paper's pipeline stops at the queries); ragmapreduce's ``summary`` 6 and ``synthesis`` 2;
#: selfconsistency's ``reasoning`` 8; judgefilter's ``generate`` 2 and ``judge`` 6.
PAPER = Profile(
    "paper",
    pools={
        "answer": Pool(2), "claims": Pool(2), "queries": Pool(3), "verdict": Pool(1),
        "summary": Pool(6), "synthesis": Pool(2),
        "reasoning": Pool(8),
        "generate": Pool(2), "judge": Pool(6),
    },
    default=None,
    replicas={"bm25": 4, "colbert": 1, "rerank": 4},
    about="the ALTO paper's FacTool deployment (answer 2, claims 2, queries 3 engines) and, "
    "ours, verdict 1, summary 6, synthesis 2, reasoning 8, generate 2, judge 6",
)

#: The profiles ``altoflow sim-lm --profile`` knows, by name.
PROFILES: Mapping[str, Profile] = MappingProxyType({p.name: p for p in (UNBOUNDED, PAPER)})


def get_profile(profile: Profile | str) -> Profile:
    """``profile`` itself, or the profile of :data:`PROFILES` called so."""
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(
            f"unknown simulated profile {profile!r}; the profiles are "
            f"{', '.join(map(repr, PROFILES))}, or pass a Profile"
        ) from None


class PoolStats(NamedTuple):
    engines: int
    max_batch: int
    #: Engines running at least one request.
    busy_engines: int
    running: int
    #: Requests waiting for a place in an engine's batch.
    waiting: int
    submitted: int
    finished: int
    aborted: int
    tokens: int
    prefix_cache_hit_tokens: int
    #: Requests that had to wait for a place in their engine's batch.
    queued: int


class SimPool:
    """The engines of one pool (each a :class:`SimCore`): events in, due tokens out, no clock.

    A request goes to the least loaded engine (running plus waiting; the lowest index on a tie)
    and stays there; beyond that engine's ``max_batch`` it waits in the engine's own queue, and
    joins the batch when one of the engine's requests ends (continuous batching). Each engine
    has its own prefix cache, as separate vLLM instances do.
    """

    def __init__(self, timing: TimingModel, engines: int = 1) -> None:
        if engines < 1:
            raise ValueError(f"a pool needs at least one engine, got {engines}")
        self.timing = timing
        self.engines = tuple(SimCore(timing) for _ in range(engines))
        self._engine_of: dict[int, SimCore] = {}
        # The engines' earliest deadline, kept until an event changes it, so that the streams
        # waiting on a pool (each asks before it sleeps) and their pumps between deadlines
        # cost no pass over the engines.
        self._deadline: float | None = None
        self._deadline_known = True
        # Whether an engine may hold outputs that fell due in a submit's or abort's catch-up,
        # which only a full advance hands out.
        self._held = False
        self._now = -math.inf

    def submit(self, rid: int, *, prompt: Sequence[str], n_out: int, now: float) -> int:
        """Like :meth:`SimCore.submit`; returns the index of the engine the request went to."""
        if rid in self._engine_of:
            raise ValueError(f"request {rid} was already submitted")
        self._check_time(now)
        self._deadline_known, self._held = False, True
        for engine in self.engines:
            engine.catch_up(now)
        index = min(range(len(self.engines)), key=lambda i: self.engines[i].load)
        self.engines[index].submit(rid, prompt=prompt, n_out=n_out, now=now)
        self._engine_of[rid] = self.engines[index]
        return index

    def abort(self, rid: int, now: float) -> bool:
        """Stop request ``rid``; returns False if it is not running or waiting (e.g. finished)."""
        self._check_time(now)
        engine = self._engine_of.pop(rid, None)
        if engine is None:
            return False
        self._deadline_known, self._held = False, True
        return engine.abort(rid, now)

    def next_deadline(self) -> float | None:
        if not self._deadline_known:
            deadlines = [d for d in (e.next_deadline() for e in self.engines) if d is not None]
            self._deadline, self._deadline_known = (min(deadlines) if deadlines else None), True
        return self._deadline

    def advance(self, now: float) -> list[TokenDue | Finished]:
        """Run every engine up to ``now``; what happened since the last call, in time order."""
        self._check_time(now)
        if not self._held and self._deadline_known and (
            self._deadline is None or now < self._deadline
        ):
            return []  # nothing falls due by ``now``, and nothing is held from a catch-up
        self._deadline_known, self._held = False, False
        out = [o for engine in self.engines for o in engine.advance(now)]
        out.sort(key=lambda o: o.at)  # stable: at one time, engine by engine, each in order
        for o in out:
            if isinstance(o, Finished):
                self._engine_of.pop(o.rid, None)
        return out

    def _check_time(self, now: float) -> None:
        # The engines check it too, but an advance that has nothing to do skips them.
        if now < self._now:
            raise ValueError(f"time went backwards: {now} < {self._now}")
        self._now = now

    def stats(self) -> PoolStats:
        each = [e.stats() for e in self.engines]
        return PoolStats(
            engines=len(self.engines),
            max_batch=self.timing.max_batch,
            busy_engines=sum(1 for s in each if s.running),
            running=sum(s.running for s in each),
            waiting=sum(s.waiting for s in each),
            submitted=sum(s.submitted for s in each),
            finished=sum(s.finished for s in each),
            aborted=sum(s.aborted for s in each),
            tokens=sum(s.tokens for s in each),
            prefix_cache_hit_tokens=sum(s.prefix_cache_hit_tokens for s in each),
            queued=sum(s.queued for s in each),
        )


# -- what the simulated LM writes ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LengthDist:
    """A count drawn from a log-normal with this mean and standard deviation, rounded.

    Log-normal because the paper's lengths are positive and skewed (62.5 ± 57.2 words).
    """

    mean: float
    std: float
    minimum: int = 1

    def __post_init__(self) -> None:
        if not self.mean > 0 or self.std < 0:
            raise ValueError(f"LengthDist needs mean > 0 and std >= 0, got {self.mean}, {self.std}")

    def sample(self, rng: random.Random) -> int:
        sigma2 = math.log1p((self.std / self.mean) ** 2)
        mu = math.log(self.mean) - sigma2 / 2
        return max(self.minimum, round(rng.lognormvariate(mu, math.sqrt(sigma2))))


@dataclass(frozen=True, slots=True)
class OutputShape:
    """The shape of a simulated output: ``lines`` lines (or one paragraph) of ``words`` words.

    ``style="sentence"`` writes capitalised sentences ending in a period; ``"query"`` writes
    lower-case search queries.
    """

    name: str
    words: LengthDist
    lines: LengthDist | None = None
    style: str = "sentence"

    def __post_init__(self) -> None:
        if self.style not in ("sentence", "query"):
            raise ValueError(f"OutputShape.style must be 'sentence' or 'query', got {self.style!r}")


#: An answer to a question: one paragraph of 62.5 ± 57.2 words.
RESPONSE = OutputShape("response", words=LengthDist(62.5, 57.2))
#: Claims extracted from a response: 3.3 ± 1.8 lines of 9.8 ± 3.5 words.
CLAIMS = OutputShape("claims", words=LengthDist(9.8, 3.5), lines=LengthDist(3.3, 1.8))
#: Search queries for a claim: 2.5 ± 1.3 lines of 5.5 ± 3.1 words.
QUERIES = OutputShape(
    "queries", words=LengthDist(5.5, 3.1), lines=LengthDist(2.5, 1.3), style="query"
)


@dataclass(frozen=True, slots=True)
class ShapeRule:
    """Use ``shape`` when ``pattern`` (a regular expression, case-insensitive) is in the prompt."""

    pattern: str
    shape: OutputShape
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern, re.IGNORECASE))

    def matches(self, text: str) -> bool:
        return self._regex.search(text) is not None


#: Queries before claims: a prompt asking for queries usually quotes the claim it is about.
DEFAULT_RULES: tuple[ShapeRule, ...] = (
    ShapeRule(r"\bquer(y|ies)\b", QUERIES),
    ShapeRule(r"\bclaims?\b", CLAIMS),
)

_JSON_RULE = re.compile(r"\bjson\b", re.IGNORECASE)

# Words the simulator writes besides those it borrows from the prompt; none of them is a word
# that the default rules look for, so one stage's output does not change the next one's shape.
_VOCABULARY = tuple(
    """
    river mountain city country history science energy water system report study market model
    century museum language region capital island ocean forest climate species population
    company product research theory method result evidence record source author album film
    season league team player election government policy economy industry network computer
    engine signal protein cell gene disease treatment hospital school university student
    bridge railway airport harbour festival painting novel poem song artist composer architect
    built founded located known named first largest oldest major northern southern eastern
    western national public early modern ancient famous original official annual regional
    discovered published released awarded elected designed produced developed established
    measured reported described recorded completed opened closed began ended won lost grew
    between during after before since about around across under within without through
    """.split()
)
_STOPWORDS = frozenset(
    "the and for that this with from what which when where who whom whose why how are was were "
    "been being have has had does did will would could should shall may might must can into "
    "onto upon over then than them they their there these those here your yours its our ours "
    "his her hers him she not but all any each few more most other some such only own same "
    "very just also json claim claims query queries extract answer question write search list "
    "please following text given response sentence line lines output return format each".split()
)
_WORD = re.compile(r"[A-Za-z]{4,}")


@dataclass(frozen=True, slots=True)
class SimPlan:
    """Everything one simulated generation will produce, decided before it starts."""

    shape: str
    tokens: tuple[str, ...]
    prompt_tokens: tuple[str, ...]
    finish_reason: str  # "stop" or "length"

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def _write(shape: OutputShape, rng: random.Random, borrowed: Sequence[str]) -> list[list[str]]:
    """The words of each line of an output."""

    def word() -> str:
        # A third of the words come from the prompt, so that queries share terms with their
        # claim and retrieval over them finds something; the rest from a fixed vocabulary.
        if borrowed and rng.random() < 0.3:
            return rng.choice(borrowed).lower()
        return rng.choice(_VOCABULARY)

    n_lines = shape.lines.sample(rng) if shape.lines is not None else 1
    lines = []
    for _ in range(n_lines):
        words = [word() for _ in range(shape.words.sample(rng))]
        if shape.style == "sentence":
            # A line is one sentence; a paragraph is sentences of 6 to 18 words.
            i = 0
            while i < len(words):
                j = (
                    len(words)
                    if shape.lines is not None
                    else min(i + rng.randint(6, 18), len(words))
                )
                words[i] = words[i].capitalize()
                words[j - 1] += "."
                i = j
        lines.append(words)
    return lines


def _tokenize(lines: list[list[str]], as_json: bool) -> list[str]:
    """One token per word; separators go with the word before them, so that a line (or a JSON
    element) is complete with the token of its last word."""
    tokens: list[str] = []
    last_line = len(lines) - 1
    for li, words in enumerate(lines):
        line_tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
        if as_json:
            line_tokens[0] = ("[" if li == 0 else " ") + '"' + line_tokens[0]
            line_tokens[-1] += '"' + ("]" if li == last_line else ",")
        elif li != last_line:
            line_tokens[-1] += "\n"
        tokens.extend(line_tokens)
    return tokens


def _cut(tokens: list[str], sampling: Sampling) -> tuple[list[str], str]:
    """Apply stop strings and max_tokens the way an engine does: whichever comes first."""
    finish = "stop"
    if sampling.stop:
        text = "".join(tokens)
        hits = [p for p in (text.find(s) for s in sampling.stop) if p >= 0]
        if hits:
            end, kept, pos = min(hits), [], 0
            for tok in tokens:
                if pos + len(tok) <= end:
                    kept.append(tok)
                else:
                    if end > pos:
                        kept.append(tok[: end - pos])
                    break
                pos += len(tok)
            tokens = kept
    if sampling.max_tokens is not None and len(tokens) > sampling.max_tokens:
        tokens, finish = tokens[: sampling.max_tokens], "length"
    return tokens, finish


# -- the shell -------------------------------------------------------------------------------


class _Inbox:
    __slots__ = ("tokens", "finished", "event", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.tokens: deque[int] = deque()
        self.finished = False
        # What its stream waits on: a future of ``loop`` under asyncio (an anyio.Event costs
        # a look-up of the async library each time it is made), an anyio.Event otherwise.
        self.event: asyncio.Future[None] | anyio.Event | None = None
        self.loop = loop  # the asyncio loop of the stream waiting on it (None: not asyncio)


class _Ticker:
    """One timer per pool and event loop: at the pool's next deadline it runs the pool and wakes
    the streams that got tokens. Streams then wait on their inbox alone; without it, each of N
    streams slept until the pool's deadline on a timeout of its own, and all N woke at every
    step. Each loop with a stream waiting has its own, so a stream never depends on another
    thread's loop running (that loop may be blocked, or end first)."""

    __slots__ = ("handle", "at")

    def __init__(self) -> None:
        self.handle: asyncio.TimerHandle | None = None
        self.at = math.inf


class _Engines:
    """The pools of one simulated deployment and the streams waiting on them (the shell's state,
    shared by a :class:`SimulatedLM` and its :meth:`SimulatedLM.for_pool` views)."""

    def __init__(self, profile: Profile, timing: TimingModel) -> None:
        self.profile = profile
        self.pools = {
            name: SimPool(profile.pool(name).timing_of(timing), profile.pool(name).engines)
            for name in profile.pool_names()
        }
        # Per pool, the ticker of each loop that has had a stream waiting on it (closed loops
        # are dropped as they are found, so the map holds the live loops only).
        self.tickers: dict[int, dict[asyncio.AbstractEventLoop, _Ticker]] = {
            id(pool): {} for pool in self.pools.values()
        }
        self.inboxes: dict[int, _Inbox] = {}
        self.ids = itertools.count()
        # Streams of several threads' loops may share the engines: the pools, the tickers and
        # the hand-over of tokens to inboxes change under this lock (uncontended in one loop).
        self.lock = threading.Lock()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # not cancelled by a stream closed while it waited
        waiter.set_result(None)


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop; None under trio (through anyio)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class SimulatedLM(LM):
    """A simulated engine (see the module docstring); deterministic given ``seed`` and prompt.

    The text depends on ``seed``, the prompt and the ``seed`` sampling parameter only. Its shape
    is chosen by the first of ``rules`` whose pattern is in the prompt (by default: a prompt
    that mentions queries gets :data:`QUERIES`, one that mentions claims :data:`CLAIMS`, any
    other :data:`RESPONSE`); a prompt that mentions JSON gets the lines as a JSON list of
    strings. Use ``timing=TimingModel().scaled(0.01)`` to run 100 times faster.

    ``profile`` is the deployment simulated (:data:`UNBOUNDED`, one engine, by default; or
    :data:`PAPER`, or any :class:`Profile`), and ``pool`` the pool this object's calls run on
    (None: the profile's default pool). ``lm.for_pool("claims")`` is the same deployment seen
    from another stage: the engines are shared, so stages compete for them as deployed.
    """

    name = SIMULATED_MODEL_NAME
    simulated = True

    def __init__(
        self,
        timing: TimingModel | None = None,
        *,
        seed: int = 0,
        rules: Sequence[ShapeRule] = DEFAULT_RULES,
        default_shape: OutputShape = RESPONSE,
        sampling: Sampling | None = None,
        clock: Callable[[], float] = time.monotonic,
        profile: Profile | str = UNBOUNDED,
        pool: str | None = None,
    ) -> None:
        super().__init__(sampling=sampling)
        self.timing = timing if timing is not None else TimingModel()
        self.seed = seed
        self.rules = tuple(rules)
        self.default_shape = default_shape
        self._clock = clock
        self._engines = _Engines(get_profile(profile), self.timing)
        self.pool = self._check_pool(pool)
        log.warning(
            "altoflow: using a SIMULATED language model (%s, no real model; seed=%d, "
            "profile=%s, %s)",
            SIMULATED_MODEL_NAME,
            seed,
            self.profile.name,
            self.timing,
        )

    @property
    def profile(self) -> Profile:
        return self._engines.profile

    def for_pool(self, pool: str) -> SimulatedLM:
        """This LM with its calls on ``pool``, sharing the engines (and seed, rules, clock)."""
        view = copy.copy(self)
        view.pool = self._check_pool(pool)
        return view

    def _check_pool(self, pool: str | None) -> str | None:
        if pool is not None:
            self.profile.pool(pool)  # raises UnknownPoolError naming the pools
        return pool

    def __repr__(self) -> str:
        where = f", profile={self.profile.name!r}" if self.profile is not UNBOUNDED else ""
        if self.pool is not None:
            where += f", pool={self.pool!r}"
        return f"SimulatedLM(SIMULATED, seed={self.seed}{where}, timing={self.timing})"

    def stats(self) -> SimStats:
        """Counts of requests and tokens so far, and what is running now, over every pool."""
        each = [pool.stats() for pool in self._engines.pools.values()]
        return SimStats(
            submitted=sum(s.submitted for s in each),
            finished=sum(s.finished for s in each),
            aborted=sum(s.aborted for s in each),
            running=sum(s.running for s in each),
            waiting=sum(s.waiting for s in each),
            tokens=sum(s.tokens for s in each),
            prefix_cache_hit_tokens=sum(s.prefix_cache_hit_tokens for s in each),
            queued=sum(s.queued for s in each),
        )

    def pool_stats(self) -> dict[str, PoolStats]:
        """Per pool: its engines, how many are busy, what runs and what waits."""
        return {name: pool.stats() for name, pool in self._engines.pools.items()}

    def plan(self, prompt: Prompt, **sampling: Any) -> SimPlan:
        """What a generation for this prompt will write (the same every time)."""
        return self._plan(normalize_prompt(prompt), self.sampling.replace(**sampling))

    def _plan(self, prompt: str | tuple[ChatMessage, ...], sampling: Sampling) -> SimPlan:
        text = (
            prompt_text(prompt) if isinstance(prompt, str) else "\n".join(m.content for m in prompt)
        )
        digest = hashlib.sha256(
            f"{self.seed}\0{sampling.seed}\0{prompt_text(prompt)}".encode()
        ).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        shape = next((r.shape for r in self.rules if r.matches(text)), self.default_shape)
        as_json = shape.lines is not None and _JSON_RULE.search(text) is not None
        borrowed = list(
            dict.fromkeys(w.lower() for w in _WORD.findall(text) if w.lower() not in _STOPWORDS)
        )
        tokens, finish = _cut(_tokenize(_write(shape, rng, borrowed), as_json), sampling)
        return SimPlan(
            shape=shape.name + (" (json)" if as_json else ""),
            tokens=tuple(tokens),
            prompt_tokens=tuple(prompt_text(prompt).split()),
            finish_reason=finish,
        )

    def _generate(
        self, prompt: str | tuple[ChatMessage, ...], sampling: Sampling
    ) -> AsyncGenerator[str, None]:
        return self.run_plan(self._plan(prompt, sampling))

    async def run_plan(
        self, plan: SimPlan, *, pool: str | None = None
    ) -> AsyncGenerator[str, None]:
        """Stream a plan's tokens on the timing model's schedule (closing it aborts it).

        It runs on ``pool`` (by default this object's pool, else the profile's default).
        """
        name = self._check_pool(pool) if pool is not None else self.pool
        if name is None:
            if self.profile.default is None:
                raise UnknownPoolError(
                    f"the simulated profile {self.profile.name!r} has no default pool: say which "
                    f"pool a call runs on, e.g. SimulatedLM(..., pool="
                    f"{next(iter(self.profile.pools))!r}) or lm.for_pool(NAME), NAME one of "
                    f"{', '.join(map(repr, self.profile.pools))}"
                )
            name = DEFAULT_POOL
        engines = self._engines
        core = engines.pools[name]
        rid = next(engines.ids)
        loop = _asyncio_loop()
        inbox = engines.inboxes[rid] = _Inbox(loop)
        self._pump(core)
        with engines.lock:
            core.submit(rid, prompt=plan.prompt_tokens, n_out=len(plan.tokens), now=self._clock())
        try:
            while True:
                self._pump(core)
                while inbox.tokens:
                    yield plan.tokens[inbox.tokens.popleft()]
                if inbox.finished:
                    return
                if loop is not None:
                    # The pool's ticker wakes us when tokens are due (or another stream's pump
                    # hands them over first).
                    waiter = inbox.event = loop.create_future()
                    self._tick_at(core, loop)
                    await waiter
                else:
                    # Not asyncio: sleep until the pool's next deadline, or until another
                    # stream's pump hands us tokens (it sets the event).
                    event = inbox.event = anyio.Event()
                    with engines.lock:
                        deadline = core.next_deadline()
                    wait = math.inf if deadline is None else max(deadline - self._clock(), 0.0)
                    with anyio.move_on_after(wait):
                        await event.wait()
                inbox.event = None
        finally:
            with engines.lock:
                del engines.inboxes[rid]
                if not inbox.finished:
                    core.abort(rid, self._clock())

    def _pump(self, core: SimPool) -> None:
        with self._engines.lock:
            self._pump_locked(core)

    def _pump_locked(self, core: SimPool) -> None:
        inboxes = self._engines.inboxes
        here = _asyncio_loop()
        for instruction in core.advance(self._clock()):
            inbox = inboxes.get(instruction.rid)
            if inbox is None:
                continue
            if isinstance(instruction, TokenDue):
                inbox.tokens.append(instruction.index)
            else:
                inbox.finished = True
            waiter = inbox.event
            if waiter is not None:
                inbox.event = None  # woken once: its stream makes a new one
                if inbox.loop is None:
                    waiter.set()  # an anyio.Event
                elif inbox.loop is here:
                    _wake(waiter)
                elif not inbox.loop.is_closed():  # a stream of another thread's loop
                    inbox.loop.call_soon_threadsafe(_wake, waiter)

    def _tick_at(self, core: SimPool, loop: asyncio.AbstractEventLoop) -> None:
        """Have ``core``'s ticker fire at the pool's next deadline, on ``loop``."""
        with self._engines.lock:
            self._tick_at_locked(core, loop)

    def _tick_at_locked(self, core: SimPool, loop: asyncio.AbstractEventLoop) -> None:
        deadline = core.next_deadline()
        if deadline is None:
            return
        tickers = self._engines.tickers[id(core)]
        ticker = tickers.get(loop)
        if ticker is None:
            for closed in [other for other in tickers if other.is_closed()]:
                del tickers[closed]
            ticker = tickers[loop] = _Ticker()
        if ticker.handle is not None:
            if ticker.at <= deadline:
                return  # it fires first anyway
            ticker.handle.cancel()
        ticker.at = deadline
        ticker.handle = loop.call_later(max(deadline - self._clock(), 0.0), self._tick, core, loop)

    def _tick(self, core: SimPool, loop: asyncio.AbstractEventLoop) -> None:
        with self._engines.lock:
            ticker = self._engines.tickers[id(core)][loop]
            ticker.handle, ticker.at = None, math.inf
            self._pump_locked(core)
            # While the pool runs, its streams are due more tokens.
            self._tick_at_locked(core, loop)

