"""LocalIngress, the slot state machine, the value encoder and the metrics, without HTTP."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
from pathlib import Path

import anyio
import numpy as np
import pytest
import serving_apps
from prometheus_client.parser import text_string_to_metric_families

import altoflow as af
from altoflow._errors import Overloaded
from altoflow._result import encode_event, jsonable
from altoflow.runtime.metrics import Buckets
from altoflow.server.ingress import SLOT_TRANSITIONS, Ingress, LocalIngress, next_slot_state

pytestmark = [pytest.mark.timeout(30), pytest.mark.anyio]

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"
WORDCOUNT = str(PIPELINES / "wordcount.py")
FAILING = str(PIPELINES / "failing.py")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def collect(stream) -> list[af.Event]:
    return [e async for e in stream]


# -- LocalIngress --------------------------------------------------------------------------------


async def test_events_are_the_executors_then_done() -> None:
    async with LocalIngress(WORDCOUNT) as ingress:
        assert isinstance(ingress, Ingress)
        async with ingress.submit({"text": "b a c"}) as stream:
            events = await collect(stream)
    expected = (await af.arun(WORDCOUNT, text="b a c")).events
    assert events[-1] == af.Event("done")
    key = lambda e: (e.stage, sorted(e.ancestry.items()), e.value)
    assert sorted(map(key, events[:-1])) == sorted(map(key, expected))


async def test_a_stage_error_gives_one_error_event_with_the_detail() -> None:
    async with LocalIngress(FAILING) as ingress:
        events = await collect(ingress.submit({"text": "ok bad"}))
    assert events[-1] == af.Event("error", "checked", {"word": 1},
                                  error="ValueError: cannot check 'bad'", exc_type="ValueError")
    assert [e.type for e in events[:-1]] == ["output"] * (len(events) - 1)
    assert ingress.stats.errors["checked"] == 1 and ingress.stats.outcomes["error"] == 1


async def test_invalid_fields_raise_input_error_naming_the_field() -> None:
    async with LocalIngress(WORDCOUNT) as ingress:
        with pytest.raises(af.InputError, match="text"):
            ingress.submit({"txt": "x"})
        assert ingress.in_flight == 0


async def test_submit_before_start_says_how_to_start() -> None:
    ingress = LocalIngress(WORDCOUNT)
    assert ingress.health()["status"] == "starting"
    assert ingress.health()["replicas"]["words"] == {"ready": 0, "desired": 1}
    with pytest.raises(RuntimeError, match="async with ingress"):
        ingress.submit({"text": "x"})


async def test_overloaded_when_every_slot_is_taken_and_free_again_after_close(gate) -> None:
    async with LocalIngress(serving_apps.gated, max_inflight=2, retry_after=3) as ingress:
        first = ingress.submit({"topic": "a"})
        second = ingress.submit({"topic": "b"})
        with pytest.raises(Overloaded, match=r"max_inflight=2") as busy:
            ingress.submit({"topic": "c"})
        assert busy.value.retry_after == 3 and ingress.stats.rejected == 1
        gate.release.set()
        assert [(await first.__anext__()).type for _ in range(3)] == ["output", "output", "done"]
        # The request has ended, but its consumer has not read to the end: still held.
        assert ingress.in_flight == 2
        assert await collect(first) == []  # reading to the end frees the slot, as aclose does
        assert ingress.in_flight == 1
        third = ingress.submit({"topic": "c"})
        for stream in (second, third):
            async with stream:
                assert (await collect(stream))[-1].type == "done"
        assert ingress.in_flight == 0


async def test_aclose_cancels_the_request_and_the_stage_sees_it(gate) -> None:
    async with LocalIngress(serving_apps.gated) as ingress:
        stream = ingress.submit({"topic": "a"})
        first = await stream.__anext__()
        assert first.value == "A IS FIRST"
        while not gate.reached.is_set():
            await anyio.sleep(0.005)
        await stream.aclose()
        assert ingress.in_flight == 1  # cancelling: the task has not ended yet
        while ingress.in_flight:
            await anyio.sleep(0.005)
    assert gate.cancelled.is_set() and gate.ended_by == "CancelledError"
    assert ingress.stats.outcomes["cancelled"] == 1
    assert ingress.health()["status"] == "stopped"


async def test_leaving_the_ingress_cancels_running_requests(gate) -> None:
    async with LocalIngress(serving_apps.gated) as ingress:
        stream = ingress.submit({"topic": "a"})
        assert (await stream.__anext__()).type == "output"
        while not gate.reached.is_set():
            await anyio.sleep(0.005)
    assert gate.cancelled.is_set()
    assert await collect(stream) == []  # the stream just ends; HTTP writes an error line for it


def samples_of(text: bytes) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


async def test_metrics_render_what_happened() -> None:
    async with LocalIngress(WORDCOUNT) as ingress:
        async with ingress.submit({"text": "x y"}) as stream:
            await collect(stream)
        samples = samples_of(ingress.metrics())
    assert samples[("altoflow_requests_total", ())] == 1
    assert samples[("altoflow_requests_in_flight", ())] == 0
    assert samples[("altoflow_requests_finished_total", (("outcome", "done"),))] == 1
    # Every stage's items, output stage or not: two words, two upper-cased, one count.
    assert samples[("altoflow_stage_output_items_total", (("stage", "words"),))] == 2
    assert samples[("altoflow_stage_output_items_total", (("stage", "upper"),))] == 2
    assert samples[("altoflow_stage_output_items_total", (("stage", "total"),))] == 1
    assert samples[("altoflow_stage_invocation_seconds_count", (("stage", "upper"),))] == 2
    assert samples[("altoflow_request_duration_seconds_count", ())] == 1
    assert samples[("altoflow_replicas_live", (("stage", "upper"),))] == 1
    assert samples[("altoflow_stage_in_flight", (("stage", "upper"),))] == 0
    assert ("process_cpu_seconds_total", ()) in samples  # prometheus_client's own collectors


async def test_stage_gauges_count_the_running_requests_work(gate) -> None:
    async with LocalIngress(serving_apps.gated) as ingress:
        stream = ingress.submit({"topic": "a"})
        assert (await stream.__anext__()).type == "output"
        while not gate.reached.is_set():
            await anyio.sleep(0.005)
        samples = samples_of(ingress.metrics())
        # The generator waits behind the gate: one invocation of `claims` runs.
        assert samples[("altoflow_stage_in_flight", (("stage", "claims"),))] == 1
        assert samples[("altoflow_stage_queue_depth", (("stage", "claims"),))] == 0
        assert samples[("altoflow_requests_in_flight", ())] == 1
        gate.release.set()
        assert (await collect(stream))[-1].type == "done"
        samples = samples_of(ingress.metrics())
        assert samples[("altoflow_stage_in_flight", (("stage", "claims"),))] == 0
    assert samples_of(ingress.metrics())[("altoflow_replicas_live", (("stage", "claims"),))] == 0


async def test_an_invocation_cancelled_by_its_requests_end_is_counted() -> None:
    # A replica process finishes such an invocation and acknowledges it; LocalIngress cancels
    # it, and counts it all the same, so that both servers count the same invocations.
    async with LocalIngress(serving_apps.stalls) as ingress:
        events = await collect(ingress.submit({"text": "bad"}))
        samples = samples_of(ingress.metrics())
    assert events[-1].type == "error" and events[-1].stage == "refused"
    assert samples[("altoflow_stage_invocation_seconds_count", (("stage", "stalling"),))] == 1
    assert samples[("altoflow_stage_invocation_seconds_count", (("stage", "refused"),))] == 1
    assert samples[("altoflow_stage_in_flight", (("stage", "stalling"),))] == 0


async def test_two_servers_in_one_process_keep_their_own_metrics() -> None:
    async with LocalIngress(WORDCOUNT) as first, LocalIngress(WORDCOUNT) as second:
        await collect(first.submit({"text": "x"}))
        assert samples_of(first.metrics())[("altoflow_requests_total", ())] == 1
        assert samples_of(second.metrics())[("altoflow_requests_total", ())] == 0


# -- the slot state machine ----------------------------------------------------------------------


@pytest.mark.parametrize("order", [("task_ended", "stream_closed"), ("stream_closed", "task_ended")])
def test_a_slot_is_released_once_both_sides_are_done(order) -> None:
    state = "running"
    for event in order:
        assert state != "released"
        state = next_slot_state(state, event)
    assert state == "released"


@pytest.mark.parametrize("state, event", [("ended", "task_ended"), ("released", "stream_closed"),
                                          ("cancelling", "stream_closed")])
def test_an_illegal_slot_transition_names_the_state_and_event(state, event) -> None:
    assert (state, event) not in SLOT_TRANSITIONS
    with pytest.raises(RuntimeError, match=f"state '{state}' cannot handle '{event}'"):
        next_slot_state(state, event)


# -- values as JSON ------------------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: int
    tags: tuple


def test_jsonable_converts_the_documented_types() -> None:
    assert jsonable(np.array([[1.5, 2.0]])) == [[1.5, 2.0]]
    assert jsonable(np.int64(3)) == 3 and type(jsonable(np.int64(3))) is int
    assert jsonable(np.bool_(True)) is True
    assert jsonable(b"\xfb\xff") == "+/8=" == base64.b64encode(b"\xfb\xff").decode()
    assert jsonable(serving_apps.Hit(doc="d", score=1.0)) == {"doc": "d", "score": 1.0}
    assert jsonable(Point(1, ("a", b"\x00"))) == {"x": 1, "tags": ["a", "AA=="]}
    assert jsonable({"k": {1, 2} - {1}}) == {"k": [2]}
    assert jsonable(datetime.date(2024, 5, 1)) == "2024-05-01"
    assert jsonable(serving_apps.Colour.RED) == "red"
    assert jsonable({1: "a"}) == {1: "a"}  # json writes it as "1", as json.dumps would


def test_jsonable_names_where_the_trouble_is() -> None:
    with pytest.raises(TypeError, match=r"value\['a'\]\[1\]\.x is a builtins.object"):
        jsonable({"a": [0, Point(object(), ())]})
    with pytest.raises(TypeError, match=r"key \(1, 2\) of type tuple"):
        jsonable({(1, 2): 0})


def test_an_unencodable_output_becomes_an_error_line() -> None:
    line, ended = encode_event(af.Event("output", "s", {"claim": 2}, value=[object()]))
    obj = json.loads(line)
    assert ended and line.endswith(b"\n") and line.count(b"\n") == 1
    assert (obj["type"], obj["stage"], obj["ancestry"], obj["exc_type"]) == (
        "error", "s", {"claim": 2}, "TypeError")
    assert "stage 's' produced a value that cannot be sent as JSON" in obj["error"]
    assert "value[0] is a builtins.object" in obj["error"]


def test_event_lines() -> None:
    assert encode_event(af.Event("done")) == (b'{"type": "done"}\n', True)
    line, ended = encode_event(af.Event("output", "s", {}, value="é"))
    assert not ended and line == '{"type": "output", "stage": "s", "ancestry": {}, "value": "é"}\n'.encode()


# -- histogram buckets ---------------------------------------------------------------------------


def test_buckets_are_cumulative_and_a_value_on_a_bound_counts_in_it() -> None:
    h = Buckets([0.25, 1.0])
    for v in (0.0625, 0.25, 0.5, 7.0):
        h.observe(v)
    assert h.cumulative() == [("0.25", 2), ("1.0", 3), ("+Inf", 4)]
    assert (h.sum, h.count) == (7.8125, 4)
