"""OpenTelemetry tracing (``altoflow serve --otel``): the spans of a request form the right tree,
with the right attributes, in every runtime; the incoming ``traceparent`` is the request span's
parent; an LM call is a child of its stage's span; and with tracing off nothing of OpenTelemetry
is imported.

Spans of this process go to the SDK's ``InMemorySpanExporter``; spans of replica processes
arrive over OTLP/HTTP at a small receiver in the test, configured by the ``OTEL_*`` variables
as a deployment would be.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra: pip install 'altoflow[otel]'")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

import altoflow as af  # noqa: E402
import altoflow.tracing  # noqa: E402
from altoflow.lm import OpenAILM  # noqa: E402
from altoflow.server import LocalIngress, create_app, serve_in_thread  # noqa: E402
from altoflow.server.served import ServedIngress  # noqa: E402

TESTS = Path(__file__).resolve().parent
TRACED = str(TESTS / "pipelines" / "traced.py")
TEXT = "one two. three. four five six"  # three claims of 2, 1 and 3 words
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"


@pytest.fixture
def spans():
    """Tracing on in this process, into an in-memory exporter; off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    altoflow.tracing.enable(provider)
    exporter.provider = provider
    yield exporter
    altoflow.tracing.disable()
    provider.shutdown()


def _by_name(finished) -> dict[str, list]:
    out: dict[str, list] = {}
    for span in finished:
        out.setdefault(span.name, []).append(span)
    return out


def _check_tree(request, stages: dict[str, list]) -> None:
    """The stage spans of one request of ``traced.py`` (TEXT), children of ``request``."""
    rid = request.context.span_id
    for name, count in {"claims": 1, "words": 3, "checked": 3, "total": 3}.items():
        got = stages[name]
        assert len(got) == count, name
        for span in got:
            assert span.parent.span_id == rid and span.context.trace_id == request.context.trace_id
            assert span.attributes["altoflow.stage"] == name
            assert span.attributes["altoflow.status"] == "ok"
    (claims,) = stages["claims"]
    assert claims.attributes["altoflow.ancestry"] == ""
    assert claims.attributes["altoflow.items_in"] == 0  # request fields only
    assert claims.attributes["altoflow.items_out"] == 3
    assert claims.attributes["altoflow.replica"] == "claims#0"
    words = stages["words"]
    assert sorted(s.attributes["altoflow.ancestry"] for s in words) == ["claim=0", "claim=1", "claim=2"]
    assert {s.attributes["altoflow.replica"] for s in words} <= {"words#0", "words#1"}
    assert all(s.attributes["altoflow.items_in"] == 1 and s.attributes["altoflow.items_out"] == 1
               for s in words)
    assert all(s.attributes["altoflow.items_in"] == 2 for s in stages["checked"])  # a join
    # The aggregate folds: its invocations emit nothing; the group's result is no invocation.
    assert all(s.attributes["altoflow.items_out"] == 0 for s in stages["total"])


def _stage_spans(finished) -> dict[str, list]:
    return {name[len("stage "):]: group for name, group in _by_name(finished).items()
            if name.startswith("stage ")}


# -- the in-process executor ------------------------------------------------------------------


def test_run_makes_a_request_span_with_a_stage_span_per_invocation(spans) -> None:
    result = af.run(TRACED, text=TEXT)
    assert result["total"] == 6
    finished = spans.get_finished_spans()
    (request,) = _by_name(finished)["request traced"]
    assert request.parent is None and request.kind == trace.SpanKind.SERVER
    assert request.attributes["altoflow.outcome"] == "done"
    assert request.attributes["altoflow.pipeline"] == "traced"
    stages = _stage_spans(finished)
    _check_tree(request, stages)
    # The stage's own code (a sync function, in a worker thread or inline) sees its span.
    seen = {value[1] for value in result["words"]}
    assert seen == {s.context.span_id for s in stages["words"]}


def test_a_failing_stage_marks_its_span_and_the_request_span(spans) -> None:
    with pytest.raises(af.StageError):
        af.run(TRACED, text="fine. boom")
    by_name = _by_name(spans.get_finished_spans())
    (request,) = by_name["request traced"]
    assert request.attributes["altoflow.outcome"] == "error"
    assert request.attributes["altoflow.error.stage"] == "checked"
    assert request.attributes["error.type"] == "ValueError"
    assert request.status.status_code == trace.StatusCode.ERROR
    failed = [s for s in by_name["stage checked"] if s.attributes["altoflow.status"] == "failed"]
    (span,) = failed
    assert span.attributes["altoflow.ancestry"] == "claim=1"
    assert span.attributes["error.type"] == "ValueError"
    assert "cannot check 'boom'" in span.attributes["altoflow.error"]
    assert span.status.status_code == trace.StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]  # the exception itself, recorded


def test_the_current_span_of_the_caller_is_the_parent(spans) -> None:
    tracer = spans.provider.get_tracer("test")

    async def main():
        with tracer.start_as_current_span("caller") as caller:
            await af.arun(TRACED, text=TEXT)
        return caller

    caller = asyncio.run(main())
    (request,) = _by_name(spans.get_finished_spans())["request traced"]
    assert request.parent.span_id == caller.get_span_context().span_id


# -- an LM call a stage makes -------------------------------------------------------------------


def test_an_lm_call_is_a_child_of_its_stage_span_and_carries_traceparent(spans) -> None:
    headers: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers)
        body = "".join(f"data: {json.dumps({'choices': [{'index': 0, 'text': t}]})}\n\n"
                       for t in ("an ", "answer")) + "data: [DONE]\n\n"
        return httpx.Response(200, content=body.encode(),
                              headers={"content-type": "text/event-stream"})

    lm = OpenAILM("http://engine.test:8001/v1", model="m", transport=httpx.MockTransport(handler))

    @af.stage
    async def answer(question: str) -> str:
        return await lm.complete(question)

    assert af.run(af.Pipeline([answer], name="asking"), question="q?")["answer"] == "an answer"
    by_name = _by_name(spans.get_finished_spans())
    (call,) = by_name["text_completion m"]
    (stage_span,) = by_name["stage answer"]
    (request,) = by_name["request asking"]
    assert call.parent.span_id == stage_span.context.span_id
    assert stage_span.parent.span_id == request.context.span_id
    assert call.kind == trace.SpanKind.CLIENT
    assert call.attributes["gen_ai.request.model"] == "m"
    assert call.attributes["server.address"] == "engine.test"
    assert call.attributes["server.port"] == 8001
    assert call.attributes["altoflow.lm.deltas"] == 2
    (sent,) = headers
    assert sent["traceparent"] == (f"00-{call.context.trace_id:032x}-"
                                   f"{call.context.span_id:016x}-{int(call.context.trace_flags):02x}")


def test_an_lm_call_without_tracing_sends_no_traceparent() -> None:
    headers: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers)
        return httpx.Response(200, json={"choices": [{"index": 0, "text": "x"}]})

    lm = OpenAILM("http://engine.test/v1", model="m", transport=httpx.MockTransport(handler))
    assert asyncio.run(lm.complete("q")) == "x"
    assert "traceparent" not in headers[0]


# -- over HTTP: the incoming traceparent, the request id ----------------------------------------


@pytest.mark.parametrize("runtime", ["local", "served-inline"])
def test_the_incoming_traceparent_is_the_request_spans_parent(spans, runtime: str) -> None:
    ingress = (LocalIngress(TRACED) if runtime == "local"
               else ServedIngress(TRACED, inline=frozenset({"all"})))
    with serve_in_thread(create_app(ingress)) as url:
        resp = httpx.post(f"{url}/v1/run", json={"text": TEXT}, timeout=30,
                          headers={"traceparent": TRACEPARENT, "X-Request-Id": "req-42"})
    assert resp.status_code == 200 and json.loads(resp.text.splitlines()[-1])["type"] == "done"
    finished = spans.get_finished_spans()
    (request,) = _by_name(finished)["request traced"]
    assert request.context.trace_id == TRACE_ID
    assert request.parent.span_id == PARENT_ID and request.parent.is_remote
    assert request.attributes["altoflow.request_id"] == "req-42"
    _check_tree(request, _stage_spans(finished))


# -- replica processes: the trace context crosses the socket ------------------------------------


class _Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: keeps every span it is sent, with its service name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                req = ExportTraceServiceRequest.FromString(body)
                for rs in req.resource_spans:
                    service = next(a.value.string_value for a in rs.resource.attributes
                                   if a.key == "service.name")
                    for ss in rs.scope_spans:
                        receiver.spans.extend((service, s) for s in ss.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_replica_processes_export_stage_spans_under_the_routers_request_span(
        spans, monkeypatch) -> None:
    receiver = _Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.server_port}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    try:
        # The workers are started with --otel because this process traces.
        with serve_in_thread(create_app(ServedIngress(TRACED))) as url:
            resp = httpx.post(f"{url}/v1/run", json={"text": TEXT}, timeout=60,
                              headers={"traceparent": TRACEPARENT, "X-Request-Id": "req-7"})
            assert json.loads(resp.text.splitlines()[-1])["type"] == "done"
        deadline = time.monotonic() + 20  # the replicas export as they shut down
        while len(receiver.spans) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        receiver.shutdown()
    (request,) = _by_name(spans.get_finished_spans())["request traced"]
    assert request.attributes["altoflow.request_id"] == "req-7"
    assert request.context.trace_id == TRACE_ID
    stages: dict[str, list] = {}
    for service, span in receiver.spans:
        assert service == "altoflow"
        assert int.from_bytes(span.trace_id, "big") == TRACE_ID
        assert int.from_bytes(span.parent_span_id, "big") == request.context.span_id
        attributes = {a.key: (a.value.int_value if a.value.HasField("int_value")
                              else a.value.string_value) for a in span.attributes}
        stages.setdefault(attributes["altoflow.stage"], []).append(attributes)
    assert {name: len(group) for name, group in stages.items()} == {
        "claims": 1, "words": 3, "checked": 3, "total": 3}
    assert sorted(a["altoflow.ancestry"] for a in stages["checked"]) == ["claim=0", "claim=1", "claim=2"]
    assert all(a["altoflow.items_in"] == 2 and a["altoflow.items_out"] == 1
               for a in stages["checked"])
    assert {a["altoflow.replica"] for a in stages["words"]} <= {"words#0", "words#1"}


# -- off: free ----------------------------------------------------------------------------------


def test_without_tracing_nothing_of_opentelemetry_is_imported() -> None:
    code = f"""
import sys, asyncio
import altoflow as af
from altoflow.server import LocalIngress, create_app
import altoflow.cli, altoflow.server.served, altoflow.runtime.worker, altoflow.lm.openai
from altoflow import ops, stage

@stage(fanout="x")
async def xs(n: int):
    for i in range(n):
        yield i

@stage(aggregate=ops.sum)
def total(xs: int) -> int:
    return xs

assert af.run(af.Pipeline([xs, total]), n=4)["total"] == 6
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
assert not loaded, loaded
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(TESTS.parent)}, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_otel_with_an_unknown_exporter_exits_2_naming_the_variable(monkeypatch) -> None:
    from typer.testing import CliRunner

    from altoflow.cli import app

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin-please")
    result = CliRunner().invoke(app, ["run", TRACED, "--otel", "--input", json.dumps({"text": "a"})])
    assert result.exit_code == 2
    assert "OTEL_TRACES_EXPORTER='zipkin-please'" in result.stderr
    assert "otlp (the default), console or none" in result.stderr
    assert not altoflow.tracing.enabled()


def test_altoflow_run_otel_exports_the_spans(tmp_path) -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "ALTOFLOW_OTEL": "1",
           "PYTHONPATH": str(TESTS.parent)}
    proc = subprocess.run([sys.executable, "-m", "altoflow", "run", TRACED,
                           "--input", json.dumps({"text": TEXT})],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    names = [json.loads(block)["name"] for block in _json_objects(proc.stdout)
             if '"name"' in block]
    assert sorted(set(names)) == ["request traced", "stage checked", "stage claims",
                                  "stage total", "stage words"]
    assert len(names) == 11


def _json_objects(text: str) -> list[str]:
    """The top-level JSON objects of ``text`` (the console exporter's, and the result's)."""
    decoder = json.JSONDecoder()
    out, pos = [], 0
    while True:
        start = text.find("{", pos)
        if start < 0:
            return out
        obj, pos = decoder.raw_decode(text, start)
        out.append(json.dumps(obj))


def test_tracing_benchmark_runs_on_a_tiny_setting(tmp_path) -> None:
    out = tmp_path / "tracing.json"
    proc = subprocess.run([sys.executable, str(TESTS.parent / "benchmarks" / "tracing.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=120,
                          cwd=TESTS.parent, env={**os.environ, "PYTHONPATH": str(TESTS.parent)})
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["benchmark"] == "tracing" and record["invocations"] == 3 * record["items"] + 2
    assert [len(record["run_seconds"][v]) for v in ("off", "on")] == [record["repeat"]] * 2
    assert set(record["frames"]) == {f"{op}_{kind}_us" for op in ("encode", "decode")
                                     for kind in ("plain", "traced")}
    assert "tracing on costs" in proc.stdout


def test_a_fused_fan_out_traced_inline_has_its_span_and_the_result(spans, tmp_path) -> None:
    # words -> total fuse (runtime.fusion): the fan-out's span stands for both.
    app = tmp_path / "fused.py"
    app.write_text(
        "from altoflow import ops, stage\n\n"
        "@stage(fanout='word')\ndef words(text: str):\n    yield from text.split()\n\n"
        "@stage(aggregate=ops.sum)\ndef total(words: str) -> int:\n    return len(words)\n")

    async def main():
        async with ServedIngress(str(app), inline=frozenset({"all"})) as ingress:
            assert ingress.supervisor.fused == {"words": "total"}
            return [e async for e in ingress.submit({"text": "ab cde f"})]

    events = asyncio.run(main())
    assert [(e.type, e.value) for e in events] == [("output", 6), ("done", None)]
    stages = _stage_spans(spans.get_finished_spans())
    (words,) = stages["words"]
    assert words.attributes["altoflow.status"] == "ok" and words.attributes["altoflow.items_out"] == 1
    assert "total" not in stages
