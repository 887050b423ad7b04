"""The HTTP API, end to end: LocalIngress behind a real uvicorn server."""

from __future__ import annotations

import json
import logging
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
import serving_apps
from prometheus_client.parser import text_string_to_metric_families

import altoflow as af
from altoflow.compiler import load_target
from altoflow.runtime.local import execute

pytestmark = pytest.mark.timeout(60)

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"
WORDCOUNT = str(PIPELINES / "wordcount.py")
FAILING = str(PIPELINES / "failing.py")
FACTOOL = str(PIPELINES / "factool.py")
JSON = {"Content-Type": "application/json"}


def lines_of(resp: httpx.Response) -> list[dict]:
    """The answer's events, the last one without its ``request_id`` (checked here: the answer's
    ``X-Request-Id``) and ``traceback`` (additive keys that tests of other keys leave aside)."""
    lines = [json.loads(line) for line in resp.iter_lines() if line]
    if lines and lines[-1]["type"] in ("done", "error"):
        assert lines[-1].pop("request_id") == resp.headers["x-request-id"]
        lines[-1].pop("traceback", None)
    return lines


def wait_for(predicate, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def metric(url: str, name: str, labels: dict | None = None) -> float:
    text = httpx.get(url + "/metrics").text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and s.labels == (labels or {}):
                return s.value
    raise KeyError(name)


# -- POST /v1/run --------------------------------------------------------------------------------


def test_run_streams_the_events_of_the_reference_executor(serve) -> None:
    url = serve(FACTOOL)
    local: list[af.Event] = []
    anyio.run(lambda: execute(load_target(FACTOOL).compiled, {"question": "Tea"},
                              on_event=local.append))
    resp = httpx.post(url + "/v1/run", json={"question": "Tea"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/x-ndjson"
    got = [json.loads(line) for line in resp.text.splitlines()]
    assert got[-1] == {"type": "done", "request_id": resp.headers["x-request-id"]}
    key = lambda e: (e["stage"], sorted(e["ancestry"].items()), e["value"])
    assert sorted(map(key, got[:-1])) == sorted(key(e.to_json()) for e in local if e.type == "output")
    assert all(e["type"] == "output" for e in got[:-1])


def test_a_failing_stage_ends_the_stream_with_an_error_event(serve) -> None:
    url = serve(FAILING)
    with pytest.raises(af.StageError) as local:
        af.run(FAILING, text="fine bad")
    got = lines_of(httpx.post(url + "/v1/run", json={"text": "fine bad"}))
    assert got[-1] == {"type": "error", "stage": "checked", "ancestry": {"word": 1},
                       "error": "ValueError: cannot check 'bad'", "exc_type": "ValueError"}
    assert local.value.detail == got[-1]["error"]
    assert [e["type"] for e in got[:-1]] == ["output"] * (len(got) - 1)


def test_lines_arrive_one_by_one_before_the_request_ends(serve, gate) -> None:
    url = serve(serving_apps.gated)
    with httpx.Client(timeout=10) as http:
        with http.stream("POST", url + "/v1/run", json={"topic": "tea"}) as resp:
            lines = resp.iter_lines()
            # If the server held lines back until the request ended, this read would time out:
            # the generator only goes on once the gate opens, below.
            first = json.loads(next(lines))
            assert first == {"type": "output", "stage": "checked", "ancestry": {"claim": 0},
                             "value": "TEA IS FIRST"}
            assert gate.reached.wait(10) and not gate.release.is_set()
            gate.release.set()
            rest = [json.loads(line) for line in lines if line]
    assert rest == [{"type": "output", "stage": "checked", "ancestry": {"claim": 1},
                     "value": "TEA IS SECOND"}, {"type": "done", "request_id": resp.headers["x-request-id"]}]
    assert not gate.cancelled.is_set()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_dash_n_shows_claims_one_by_one(serve, gate) -> None:
    url = serve(serving_apps.gated)
    proc = subprocess.Popen(
        ["curl", "-N", "-sS", "-X", "POST", url + "/v1/run", "-H", "Content-Type: application/json",
         "-H", "X-Request-Id: curl-1", "-d", '{"topic": "tea"}'],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "curl printed nothing while the generator waits"
        first = json.loads(proc.stdout.readline())
        assert first["value"] == "TEA IS FIRST" and not gate.release.is_set()
        gate.release.set()
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert [json.loads(line) for line in out.splitlines()] == [
        {"type": "output", "stage": "checked", "ancestry": {"claim": 1}, "value": "TEA IS SECOND"},
        {"type": "done", "request_id": "curl-1"},
    ]


def test_a_client_that_disconnects_cancels_its_request(serve, gate) -> None:
    url = serve(serving_apps.gated)
    with httpx.Client(timeout=10) as http:
        with http.stream("POST", url + "/v1/run", json={"topic": "tea"}) as resp:
            lines = resp.iter_lines()
            assert json.loads(next(lines))["value"] == "TEA IS FIRST"
            assert gate.reached.wait(10)
            assert not gate.cancelled.is_set()
            resp.close()  # the connection closes mid-stream
    assert gate.cancelled.wait(10), "the stage never saw the cancellation"
    assert gate.ended_by == "CancelledError"
    wait_for(lambda: metric(url, "altoflow_requests_in_flight") == 0, "the slot to be freed")
    assert metric(url, "altoflow_requests_finished_total", {"outcome": "cancelled"}) == 1
    assert metric(url, "altoflow_requests_finished_total", {"outcome": "done"}) == 0


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"txt": "a b"}', ["text", "Field required", "txt", "Extra inputs are not permitted"]),
        (b'{"text": 3}', ["text", "Input should be a valid string"]),
        (b"[1, 2]", ["JSON array", '{"text": ...}']),
        (b'"text"', ["JSON string"]),
        (b"{not json", ["not valid JSON"]),
        (b"", ["text", "Field required"]),
    ],
)
def test_invalid_input_gets_422_with_pydantics_message(serve, body: bytes, words: list[str]) -> None:
    url = serve(WORDCOUNT)
    resp = httpx.post(url + "/v1/run", content=body, headers=JSON)
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    for w in words:
        assert w in detail
    if body.startswith(b'{"t'):
        assert {tuple(e["loc"]) for e in resp.json()["errors"]} >= {("text",)}


def test_503_with_retry_after_when_max_inflight_requests_run(serve, gate) -> None:
    url = serve(serving_apps.gated, max_inflight=1, retry_after=7)
    with httpx.Client(timeout=10) as http:
        with http.stream("POST", url + "/v1/run", json={"topic": "tea"}) as held:
            lines = held.iter_lines()
            assert json.loads(next(lines))["type"] == "output"
            busy = http.post(url + "/v1/run", json={"topic": "coffee"})
            assert busy.status_code == 503
            assert busy.headers["retry-after"] == "7"
            assert "max_inflight=1" in busy.json()["detail"]
            gate.release.set()
            assert [json.loads(x)["type"] for x in lines if x] == ["output", "done"]
        wait_for(lambda: metric(url, "altoflow_requests_in_flight") == 0, "the slot to be freed")
        again = http.post(url + "/v1/run", json={"topic": "coffee"})
    assert again.status_code == 200 and json.loads(again.text.splitlines()[-1])["type"] == "done"
    assert metric(url, "altoflow_requests_rejected_total") == 1


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("numpy", [[0, 1], [2, 3]]),
        ("scalar", 0.5),
        ("bytes", "+/8A"),
        ("model", {"doc": "d1", "score": 0.25}),
        ("tuple", ["a", 1, [2.5, None]]),
        ("dataclass", {"start": 1, "end": 3}),
        ("enum", "red"),
    ],
)
def test_values_are_sent_as_json(serve, kind: str, value: object) -> None:
    url = serve(serving_apps.values)
    got = lines_of(httpx.post(url + "/v1/run", json={"kind": kind}))
    assert got == [{"type": "output", "stage": "value", "ancestry": {}, "value": value},
                   {"type": "done"}]


@pytest.mark.parametrize(("kind", "where"), [("object", "value is a builtins.object"),
                                             ("nested_object", "value['bad'][1] is a builtins.object")])
def test_a_value_without_json_form_gives_an_error_event(serve, kind: str, where: str) -> None:
    url = serve(serving_apps.values)
    got = lines_of(httpx.post(url + "/v1/run", json={"kind": kind}))
    assert len(got) == 1
    error = got[0]
    assert (error["type"], error["stage"], error["ancestry"], error["exc_type"]) == (
        "error", "value", {}, "TypeError")
    assert "cannot be sent as JSON" in error["error"] and where in error["error"]
    assert httpx.post(url + "/v1/run", json={"kind": "enum"}).status_code == 200  # still serving


# -- GET /v1/graph, /healthz, /metrics -----------------------------------------------------------


def test_graph_is_the_compile_json_document_plus_outputs_and_request_schema(serve) -> None:
    url = serve(WORDCOUNT)
    cli = subprocess.run(
        [sys.executable, "-m", "altoflow.cli", "compile", WORDCOUNT, "--format", "json"],
        capture_output=True, text=True, check=True,
    )
    graph = httpx.get(url + "/v1/graph").json()
    assert set(graph) == {"stages", "outputs", "request_schema"}
    assert {"stages": graph["stages"]} == json.loads(cli.stdout)
    assert graph["outputs"] == ["upper", "total"]
    schema = graph["request_schema"]
    assert schema["required"] == ["text"] and schema["properties"]["text"]["type"] == "string"


def test_healthz(serve) -> None:
    url = serve(WORDCOUNT)
    resp = httpx.get(url + "/healthz")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok"
    assert body["replicas"] == {s: {"ready": 1, "desired": 1} for s in ["words", "upper", "total"]}


def test_metrics_parse_as_prometheus_text_and_count_what_happened(serve) -> None:
    url = serve(WORDCOUNT)
    assert httpx.post(url + "/v1/run", json={"text": "a b c"}).status_code == 200
    assert httpx.post(url + "/v1/run", json={"text": "d"}).status_code == 200
    resp = httpx.get(url + "/metrics")
    assert resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    assert families["altoflow_request_duration_seconds"].type == "histogram"
    assert families["altoflow_requests_in_flight"].type == "gauge"

    def value(name: str, **labels: str) -> float:
        return metric(url, name, labels)

    assert value("altoflow_requests_total") == 2
    assert value("altoflow_requests_finished_total", outcome="done") == 2
    assert value("altoflow_requests_finished_total", outcome="error") == 0
    assert value("altoflow_request_duration_seconds_count") == 2
    assert value("altoflow_request_duration_seconds_bucket", le="+Inf") == 2
    assert value("altoflow_stage_output_items_total", stage="upper") == 4
    assert value("altoflow_stage_output_items_total", stage="total") == 2


def test_metrics_count_stage_errors(serve) -> None:
    url = serve(FAILING)
    httpx.post(url + "/v1/run", json={"text": "bad"})
    assert metric(url, "altoflow_stage_errors_total", {"stage": "checked"}) == 1
    assert metric(url, "altoflow_requests_finished_total", {"outcome": "error"}) == 1


def _done_request_id(resp: httpx.Response) -> str:
    return json.loads(resp.text.splitlines()[-1])["request_id"]


def test_a_given_x_request_id_comes_back_in_the_header_and_the_done_event(serve) -> None:
    url = serve(WORDCOUNT)
    resp = httpx.post(url + "/v1/run", json={"text": "a b"}, headers={"X-Request-Id": "trace-42"})
    assert resp.headers["x-request-id"] == "trace-42"
    assert _done_request_id(resp) == "trace-42"


@pytest.mark.parametrize("given", [None, "x" * 129, "has space", "naïve"])
def test_a_missing_or_unfit_x_request_id_is_replaced_by_a_new_one(serve, given) -> None:
    url = serve(WORDCOUNT)
    headers = {"X-Request-Id": given.encode()} if given is not None else {}
    ids = set()
    for _ in range(2):
        resp = httpx.post(url + "/v1/run", json={"text": "a"}, headers=headers)
        rid = resp.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", rid) and _done_request_id(resp) == rid
        ids.add(rid)
    assert len(ids) == 2


def test_every_answer_has_a_request_id(serve) -> None:
    url = serve(WORDCOUNT)
    assert httpx.get(url + "/healthz", headers={"X-Request-Id": "h-1"}).headers["x-request-id"] == "h-1"
    bad = httpx.post(url + "/v1/run", json={"txt": "a"}, headers={"X-Request-Id": "v-1"})
    assert bad.status_code == 422 and bad.headers["x-request-id"] == "v-1"


def test_a_failing_stage_is_logged_with_the_request_id_stage_ancestry_and_users_frame(
        serve, caplog) -> None:
    url = serve(FAILING)
    with caplog.at_level(logging.ERROR, logger="altoflow"):
        resp = httpx.post(url + "/v1/run", json={"text": "fine bad"},
                          headers={"X-Request-Id": "fail-1"})
        wait_for(lambda: any(r.name.startswith("altoflow.") for r in caplog.records),
                 "the failure's log record")
    error = json.loads(resp.text.splitlines()[-1])
    assert error["request_id"] == "fail-1"
    assert error["traceback"].splitlines()[1] == f'  File "{FAILING}", line 14, in checked'
    [record] = [r for r in caplog.records if r.name.startswith("altoflow.")]
    assert (record.request_id, record.stage, record.ancestry) == ("fail-1", "checked", {"word": 1})
    assert f"at {FAILING}:14 in checked" in record.getMessage()
    assert record.user_traceback == error["traceback"]


def test_create_app_tracebacks_false_keeps_them_out_of_the_events(serve) -> None:
    from altoflow.server import LocalIngress, create_app, serve_in_thread

    with serve_in_thread(create_app(LocalIngress(FAILING), tracebacks=False)) as url:
        error = json.loads(httpx.post(url + "/v1/run", json={"text": "bad"}).text.splitlines()[-1])
    assert error["type"] == "error" and "traceback" not in error and "request_id" in error


def test_a_stages_own_log_records_under_local_ingress_have_the_request_id(serve) -> None:
    import io

    from altoflow import _logging

    url = serve(str(PIPELINES / "chatty.py"))
    out = io.StringIO()
    handler = _logging.configure("warning", "json", stream=out)
    try:
        httpx.post(url + "/v1/run", json={"text": "a"}, headers={"X-Request-Id": "ctx-1"})
    finally:
        logging.getLogger().removeHandler(handler)
    [record] = [json.loads(line) for line in out.getvalue().splitlines()
                if json.loads(line)["logger"] == "chatty"]
    assert record["message"] == "checking a" and record["request_id"] == "ctx-1"
