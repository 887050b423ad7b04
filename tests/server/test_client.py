"""``altoflow.client.Client`` against a served LocalIngress: the same Result and errors as run."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from pathlib import Path

import anyio
import httpx
import pytest
import serving_apps
from prometheus_client.parser import text_string_to_metric_families

import altoflow as af
from altoflow.client import Client, ServerBusy, ServerError, ServerUnavailable
from altoflow.server import LocalIngress, create_app

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent.parent
PIPELINES = ROOT / "tests" / "pipelines"
FAILING = str(PIPELINES / "failing.py")

CASES = [
    pytest.param(str(PIPELINES / "wordcount.py"), {"text": "the cat the hat"}, id="wordcount"),
    pytest.param(str(PIPELINES / "wordcount.py"), {"text": ""}, id="wordcount-empty"),
    pytest.param(str(PIPELINES / "factool.py"), {"question": "Tea"}, id="factool"),
    pytest.param(str(PIPELINES / "twelve.py"), {"question": "why", "sections": 3}, id="twelve"),
    pytest.param(str(ROOT / "examples" / "helpsearch.py"),
                 {"question": "the with statement, and lambda"}, id="helpsearch"),
]


def as_json(value):
    """What a value looks like after a trip through JSON (tuples become lists, and so on)."""
    return json.loads(json.dumps(value))


def same_result(got: af.Result, want: af.Result) -> None:
    assert as_json(got.to_dict()) == as_json(want.to_dict())
    assert list(got) == list(want)
    for stage in want:
        assert as_json(got.items_with_ancestry(stage)) == as_json(want.items_with_ancestry(stage))
    key = lambda e: (e.stage, sorted(e.ancestry.items()), json.dumps(e.value))
    assert sorted(map(key, got.events)) == sorted(key(e) for e in want.events)


@pytest.mark.parametrize(("target", "fields"), CASES)
def test_run_returns_what_altoflow_run_returns(serve, target, fields) -> None:
    with Client(serve(target), timeout=10) as client:
        same_result(client.run(**fields), af.run(target, **fields))
        same_result(client.run(**fields), af.run(target, **fields))  # graph fetched once, reused


@pytest.mark.parametrize(("target", "fields"), CASES)
def test_arun_returns_what_altoflow_run_returns(serve, target, fields) -> None:
    client = Client(serve(target), timeout=10)
    same_result(anyio.run(lambda: client.arun(**fields)), af.run(target, **fields))


def test_result_indexing_follows_levels(serve) -> None:
    result = Client(serve(str(PIPELINES / "wordcount.py"))).run(text="b a")
    assert result["upper"] == ["B", "A"] and result["total"] == 2
    with pytest.raises(KeyError, match="not an output stage"):
        result["words"]


def test_stream_yields_outputs_then_done(serve) -> None:
    client = Client(serve(str(PIPELINES / "wordcount.py")))
    events = list(client.stream(text="x y"))
    assert events[-1] == af.Event("done")
    assert sorted((e.stage, e.value) for e in events[:-1]) == [("total", 2), ("upper", "X"),
                                                               ("upper", "Y")]


def test_stream_yields_each_event_as_it_arrives(serve, gate) -> None:
    client = Client(serve(serving_apps.gated), timeout=10)
    events = client.stream(topic="tea")
    first = next(events)  # a read timeout here would mean the server held it back
    assert (first.stage, first.ancestry, first.value) == ("checked", {"claim": 0}, "TEA IS FIRST")
    assert not gate.release.is_set()
    gate.release.set()
    assert [(e.type, e.value) for e in events] == [("output", "TEA IS SECOND"), ("done", None)]


def test_leaving_a_stream_early_cancels_the_request(serve, gate) -> None:
    client = Client(serve(serving_apps.gated), timeout=10)
    for event in client.stream(topic="tea"):
        assert event.value == "TEA IS FIRST"
        break
    assert gate.cancelled.wait(10), "the stage never saw the cancellation"


async def _astream_first_then_rest(client: Client, gate) -> list[af.Event]:
    seen = []
    async for event in client.astream(topic="tea"):
        seen.append(event)
        if len(seen) == 1:
            assert not gate.release.is_set()
            gate.release.set()
    return seen


def test_astream_yields_each_event_as_it_arrives(serve, gate) -> None:
    client = Client(serve(serving_apps.gated), timeout=10)
    seen = anyio.run(_astream_first_then_rest, client, gate)
    assert [(e.type, e.value) for e in seen] == [
        ("output", "TEA IS FIRST"), ("output", "TEA IS SECOND"), ("done", None)]


@pytest.mark.parametrize("pooled", [True, False], ids=["async-with", "own-pool"])
def test_astream_left_early_closes_cleanly(serve, gate, caplog, pooled) -> None:
    # asyncio.run closes the generators left suspended at its end, all at once; a generator
    # that another is still closing logs "aclose(): asynchronous generator is already running".
    client = Client(serve(serving_apps.gated), timeout=10)

    async def first() -> af.Event:
        async for event in client.astream(topic="tea"):
            return event
        raise AssertionError("no event")

    async def main() -> af.Event:
        if not pooled:
            return await first()
        async with client:
            return await first()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        event = asyncio.run(main())
    assert event.value == "TEA IS FIRST"
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.WARNING] == []
    assert gate.cancelled.wait(10), "the stage never saw the cancellation"


def _local_error() -> af.StageError:
    with pytest.raises(af.StageError) as info:
        af.run(FAILING, text="ok bad")
    return info.value


def _check_error(err: af.StageError) -> None:
    local = _local_error()
    assert (err.stage, err.ancestry, err.exc_type, err.detail) == (
        local.stage, local.ancestry, local.exc_type, local.detail)
    assert str(err) == str(local) == "stage 'checked' failed on word=1: ValueError: cannot check 'bad'"


def test_a_served_error_raises_the_same_stage_error(serve) -> None:
    client = Client(serve(FAILING))
    with pytest.raises(af.StageError) as info:
        client.run(text="ok bad")
    _check_error(info.value)
    with pytest.raises(af.StageError) as info:
        anyio.run(lambda: client.arun(text="ok bad"))
    _check_error(info.value)


def test_stream_raises_after_the_events_before_the_error(serve) -> None:
    client = Client(serve(FAILING))
    seen = []
    with pytest.raises(af.StageError, match="word=1"):
        for event in client.stream(text="ok bad"):
            seen.append(event)
    assert [e.type for e in seen] == ["output"] * len(seen)
    assert {(e.stage, e.ancestry["word"], e.value) for e in seen} <= {("checked", 0, "ok")}


def test_invalid_input_raises_input_error(serve) -> None:
    client = Client(serve(FAILING))
    with pytest.raises(af.InputError, match=r"(?s)text.*Field required.*tex.*Extra inputs"):
        client.run(tex="x")
    with pytest.raises(af.InputError, match="valid string"):
        anyio.run(lambda: client.arun(text=3))


def test_a_full_server_raises_server_busy(serve, gate) -> None:
    url = serve(serving_apps.gated, max_inflight=1, retry_after=2)
    client = Client(url, timeout=10)
    held = client.stream(topic="tea")
    assert next(held).type == "output"
    with pytest.raises(ServerBusy, match=f"{url}/v1/run is busy") as busy:
        Client(url, busy_retries=0).run(topic="coffee")
    assert busy.value.retry_after == 2 and isinstance(busy.value, ConnectionError)
    gate.release.set()
    assert [e.type for e in held] == ["output", "done"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_raises_a_connection_error_naming_the_url() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(ServerUnavailable, match=f"{url}/v1/graph") as info:
        Client(url, timeout=5).run(text="x")
    assert isinstance(info.value, ConnectionError)
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    with pytest.raises(ConnectionError, match=f"{url}/v1/run"):
        list(Client(url, timeout=5).stream(text="x"))
    with pytest.raises(ConnectionError, match=url):
        anyio.run(lambda: Client(url, timeout=5).arun(text="x"))


def test_asgi_transport_serves_the_async_methods() -> None:
    async def main() -> af.Result:
        async with LocalIngress(str(PIPELINES / "wordcount.py")) as ingress:
            transport = httpx.ASGITransport(app=create_app(ingress))
            async with Client("http://altoflow.test", transport=transport) as client:
                return await client.arun(text="p q")

    same_result(anyio.run(main), af.run(str(PIPELINES / "wordcount.py"), text="p q"))
    client = Client("http://altoflow.test", transport=httpx.ASGITransport(app=None))
    with pytest.raises(TypeError, match="async-only: call arun/astream"):
        client.run(text="x")


# -- a scripted server, for answers a real one does not give --------------------------------------

GRAPH = {"stages": [{"name": "s", "kind": "source", "inputs": [], "levels_in": [],
                     "levels_out": [], "route_key": None, "replicas": 1}],
         "outputs": ["s"], "request_schema": {}}


def scripted(run_body: bytes, status: int = 200) -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/graph":
            return httpx.Response(200, json=GRAPH)
        assert json.loads(request.content) == {"x": [1, 2]}
        return httpx.Response(status, content=run_body)

    return Client("http://scripted", transport=httpx.MockTransport(handler))


def test_a_stream_cut_short_raises_server_error() -> None:
    body = b'{"type": "output", "stage": "s", "ancestry": {}, "value": 1}\n'
    with pytest.raises(ServerError, match="ended the stream before the request ended"):
        scripted(body).run(x=(1, 2))


def test_a_line_that_is_no_event_raises_server_error() -> None:
    with pytest.raises(ServerError, match="not an event"):
        scripted(b"<html>oops</html>\n").run(x=(1, 2))


def test_an_error_event_without_a_stage_raises_server_error() -> None:
    body = b'{"type": "error", "stage": null, "ancestry": {}, "error": "shutting down"}\n'
    with pytest.raises(ServerError, match="failed: shutting down"):
        scripted(body).run(x=[1, 2])


def test_an_unexpected_status_raises_server_error_with_the_body() -> None:
    with pytest.raises(ServerError, match="answered 500: Internal Server Error"):
        scripted(b"Internal Server Error", status=500).run(x=[1, 2])


def test_a_depth0_output_is_the_value_and_fields_are_sent_as_json() -> None:
    body = b'{"type": "output", "stage": "s", "ancestry": {}, "value": [3]}\n{"type": "done"}\n'
    assert scripted(body).run(x=(1, 2))["s"] == [3]
    np = pytest.importorskip("numpy")
    assert scripted(body).run(x=np.array([1, 2]))["s"] == [3]


def test_fields_without_json_form_raise_type_error() -> None:
    with pytest.raises(TypeError, match="request field of type object"):
        scripted(b"").run(x=object())



def test_a_served_stage_error_has_the_users_traceback_and_the_request_id(serve) -> None:
    client = Client(serve(FAILING))
    with pytest.raises(af.StageError) as info:
        client.run(text="ok bad")
    tb = info.value.traceback
    assert tb.splitlines()[1] == f'  File "{FAILING}", line 14, in checked'
    assert tb.rstrip().endswith("ValueError: cannot check 'bad'")
    assert len(info.value.request_id) == 32


def test_a_busy_server_is_retried_after_its_retry_after(serve, gate) -> None:
    url = serve(serving_apps.gated, max_inflight=1, retry_after=1)
    held = Client(url, timeout=10).stream(topic="tea")
    assert next(held).type == "output"
    got: list = []

    def second() -> None:
        got.append(Client(url, timeout=10, busy_retries=20, busy_wait=20).run(topic="coffee"))

    thread = threading.Thread(target=second)
    thread.start()
    deadline = time.monotonic() + 10
    while _rejected(url) < 1:  # the second request was turned away at least once
        assert time.monotonic() < deadline, "the second request got no 503"
        time.sleep(0.01)
    gate.release.set()
    assert [e.type for e in held] == ["output", "done"]
    thread.join(timeout=30)
    assert got and got[0]["checked"] == ["COFFEE IS FIRST", "COFFEE IS SECOND"]


def _rejected(url: str) -> float:
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            if sample.name == "altoflow_requests_rejected_total":
                return sample.value
    return 0


def _busy_then(answers: list[httpx.Response], seen: list[httpx.Request]) -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/graph":
            return httpx.Response(200, json=GRAPH)
        seen.append(request)
        return answers.pop(0) if answers else httpx.Response(
            200, content=b'{"type": "output", "stage": "s", "ancestry": {}, "value": 1}\n'
                         b'{"type": "done"}\n')

    return Client("http://scripted", transport=httpx.MockTransport(handler), busy_retries=2,
                  busy_wait=5)


def busy(retry_after: str | None = "0") -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(503, json={"detail": "full"}, headers=headers)


def test_busy_retries_are_bounded_in_number() -> None:
    seen: list = []
    with pytest.raises(ServerBusy, match=r"busy \(503\) \(after 2 retries\): full"):
        _busy_then([busy(), busy(), busy()], seen).run(x=1)
    assert len(seen) == 3  # the first try and two retries
    seen.clear()
    assert _busy_then([busy(), busy()], seen).run(x=1)["s"] == 1
    assert len(seen) == 3


def test_a_retry_after_past_the_wait_budget_raises_at_once() -> None:
    seen: list = []
    with pytest.raises(ServerBusy) as info:
        _busy_then([busy("60")], seen).run(x=1)
    assert info.value.retry_after == 60 and len(seen) == 1


def test_busy_retries_in_async_code_too() -> None:
    seen: list = []
    result = anyio.run(lambda: _busy_then([busy(), busy()], seen).arun(x=1))
    assert result["s"] == 1 and len(seen) == 3


def test_busy_retries_zero_never_retries() -> None:
    seen: list = []
    client = Client("http://scripted", busy_retries=0,
                    transport=httpx.MockTransport(lambda r: httpx.Response(200, json=GRAPH)
                                                  if r.url.path == "/v1/graph"
                                                  else (seen.append(r), busy())[1]))
    with pytest.raises(ServerBusy):
        client.run(x=1)
    assert len(seen) == 1
    with pytest.raises(ValueError, match="busy_retries and busy_wait take 0 or more"):
        Client("http://x", busy_retries=-1)


def test_a_url_without_a_scheme_means_http(serve) -> None:
    url = serve(FAILING)
    bare = url.removeprefix("http://")
    client = Client(bare)
    assert client.base_url == url
    assert client.run(text="ok")["checked"] == ["ok"]
