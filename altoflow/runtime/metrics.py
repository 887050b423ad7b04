"""One server's metrics: the same names, with the same meanings, under every ingress.

``GET /metrics`` of ``altoflow serve`` (the router) and of ``LocalIngress`` (the in-process
executor) expose exactly the families in ``METRICS``, plus prometheus_client's process, platform
and garbage-collector collectors. Each server has its own ``CollectorRegistry``, so two servers
in one process do not collide.

The runtimes count as work happens, in plain ints and bucket lists: the router counts every
item and every acknowledgement, and a prometheus_client ``Counter`` costs about a microsecond
per increment, which would be a noticeable share of the router's work per item. A custom
collector turns the counts into metric families when ``/metrics`` is scraped, and reads the
gauges (queue depth, in-flight invocations, live replicas) live from the runtime then: the
per-stage queue and in-flight counts come from ``RouterCore.statistics()`` of every core in
``cores`` (the router's one core, or one per running local request).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest

if TYPE_CHECKING:
    from altoflow.runtime.core import RouterCore

# The exposition format ``generate_latest`` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Outcome = Literal["done", "error", "cancelled"]


class MetricSpec(NamedTuple):
    """One metric family as exposed: its full name, type, labels and help text."""

    name: str
    type: Literal["counter", "gauge", "histogram"]
    labels: tuple[str, ...]
    help: str


# The one list of altoflow's metrics; docs/serving.md has them as a table, and a test keeps the
# two in step.
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("altoflow_requests_in_flight", "gauge", (),
               "Requests holding one of the server's max_inflight slots."),
    MetricSpec("altoflow_requests_total", "counter", (), "Requests admitted."),
    MetricSpec("altoflow_requests_finished_total", "counter", ("outcome",),
               "Requests that ended, by outcome: done, error or cancelled."),
    MetricSpec("altoflow_requests_rejected_total", "counter", (),
               "Requests answered 503 because every slot was taken."),
    MetricSpec("altoflow_request_duration_seconds", "histogram", (),
               "Seconds from admission to the request's done or error event."),
    MetricSpec("altoflow_stage_output_items_total", "counter", ("stage",),
               "Items each stage produced, output stages or not."),
    MetricSpec("altoflow_stage_errors_total", "counter", ("stage",),
               "Invocations that failed after their retries under on_error='fail'."),
    MetricSpec("altoflow_items_poisoned_total", "counter", ("stage",),
               "Items given up because replicas kept dying while running them (poison inputs)."),
    MetricSpec("altoflow_stage_invocation_seconds", "histogram", ("stage",),
               "Seconds from an invocation's dispatch to a replica to its acknowledgement."),
    MetricSpec("altoflow_stage_queue_depth", "gauge", ("stage",),
               "Invocations waiting for a free replica."),
    MetricSpec("altoflow_stage_in_flight", "gauge", ("stage",),
               "Invocations dispatched to a replica and not yet acknowledged."),
    MetricSpec("altoflow_replicas_live", "gauge", ("stage",), "Replicas ready to take work."),
    MetricSpec("altoflow_replay_buffered_items", "gauge", (),
               "Inputs of open aggregate groups kept to replay them if their replica dies."),
    MetricSpec("altoflow_answer_buffered_bytes", "gauge", (),
               "Bytes of answers (output events) waiting for their clients to read them."),
    MetricSpec("altoflow_requests_paused", "gauge", (),
               "Requests paused because their client reads slower than they produce."),
)


class Buckets:
    """A cumulative-bucket histogram's counts; ``observe`` is a bisect and three additions."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self.bounds = sorted(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """``[(le, count of observations <= le), ..., ("+Inf", count)]``."""
        out, total = [], 0
        for bound, n in zip([*self.bounds, math.inf], self.counts):
            total += n
            out.append(("+Inf" if bound == math.inf else repr(float(bound)), total))
        return out


class ServerMetrics:
    """The counts one server keeps, and its registry.

    The runtime bumps the counters directly (``stats.admitted += 1``, ``stats.items[stage] +=
    1``); ``requests_in_flight`` and ``replicas_live`` are asked at scrape time, and so are the
    ``statistics()`` of every core in ``cores``.
    """

    def __init__(self, stages: Sequence[str], *, requests_in_flight: Callable[[], int],
                 replicas_live: Callable[[], Mapping[str, int]],
                 answer_buffered_bytes: Callable[[], int] = lambda: 0) -> None:
        self.stages = list(stages)
        self.admitted = 0
        self.rejected = 0
        self.outcomes: dict[str, int] = {"done": 0, "error": 0, "cancelled": 0}
        self.latency = Buckets()
        self.items = dict.fromkeys(self.stages, 0)
        self.errors = dict.fromkeys(self.stages, 0)
        self.invocation = {name: Buckets() for name in self.stages}
        self.cores: set[RouterCore] = set()
        self._requests_in_flight = requests_in_flight
        self._replicas_live = replicas_live
        self._answer_buffered_bytes = answer_buffered_bytes
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(_Collector(self))

    def finished(self, outcome: Outcome, seconds: float) -> None:
        """A request ended; a cancelled one does not count towards the duration histogram."""
        self.outcomes[outcome] += 1
        if outcome != "cancelled":
            self.latency.observe(seconds)

    def acknowledged(self, stage: str, failed: bool, seconds: float) -> None:
        """An invocation of ``stage`` was acknowledged ``seconds`` after its dispatch."""
        self.invocation[stage].observe(seconds)
        if failed:
            self.errors[stage] += 1

    def render(self) -> bytes:
        """The registry in Prometheus' text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)


class _Collector:
    """Builds altoflow's families from a ``ServerMetrics`` at each scrape."""

    def __init__(self, stats: ServerMetrics) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        st = self.stats
        queued = dict.fromkeys(st.stages, 0)
        in_flight = dict.fromkeys(st.stages, 0)
        buffered = 0
        poisoned = dict.fromkeys(st.stages, 0)
        paused = 0
        for core in list(st.cores):
            for name, n in core.poisoned.items():
                poisoned[name] += n
            core_stats = core.statistics()
            buffered += core_stats.replay_buffered
            paused += core_stats.paused
            for name, n in core_stats.queued.items():
                queued[name] += n
            for name, n in core_stats.in_flight.items():
                in_flight[name] += n
        live = st._replicas_live()
        values = {
            "altoflow_requests_in_flight": {(): st._requests_in_flight()},
            "altoflow_requests_total": {(): st.admitted},
            "altoflow_requests_finished_total": {(o,): n for o, n in sorted(st.outcomes.items())},
            "altoflow_requests_rejected_total": {(): st.rejected},
            "altoflow_request_duration_seconds": {(): st.latency},
            "altoflow_stage_output_items_total": _per_stage(st.items),
            "altoflow_stage_errors_total": _per_stage(st.errors),
            "altoflow_items_poisoned_total": _per_stage(poisoned),
            "altoflow_stage_invocation_seconds": _per_stage(st.invocation),
            "altoflow_stage_queue_depth": _per_stage(queued),
            "altoflow_stage_in_flight": _per_stage(in_flight),
            "altoflow_replicas_live": {(name,): live.get(name, 0) for name in st.stages},
            "altoflow_replay_buffered_items": {(): buffered},
            "altoflow_answer_buffered_bytes": {(): st._answer_buffered_bytes()},
            "altoflow_requests_paused": {(): paused},
        }
        for spec in METRICS:
            yield _family(spec, values[spec.name])


def _per_stage(values: Mapping[str, object]) -> dict[tuple[str, ...], object]:
    return {(name,): value for name, value in values.items()}


def _family(spec: MetricSpec, samples: Mapping[tuple[str, ...], object]) -> Metric:
    labels = list(spec.labels)
    family: Metric
    if spec.type == "histogram":
        family = HistogramMetricFamily(spec.name, spec.help, labels=labels)
        for key, buckets in samples.items():
            assert isinstance(buckets, Buckets)
            family.add_metric(list(key), buckets.cumulative(), buckets.sum)
        return family
    if spec.type == "counter":
        family = CounterMetricFamily(spec.name, spec.help, labels=labels)
    else:
        family = GaugeMetricFamily(spec.name, spec.help, labels=labels)
    for key, value in samples.items():
        family.add_metric(list(key), value)  # type: ignore[arg-type]
    return family
