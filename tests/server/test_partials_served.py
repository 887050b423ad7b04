"""``partial`` events served: through the router from inline and process replicas, over HTTP as
NDJSON and as server-sent events, and bounded for a client that does not read.

The pipeline is tests/pipelines/partials.py, whose ``expected`` is the plain-Python oracle.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx
import pytest

import altoflow as af
from altoflow._result import Event
from altoflow.client import Client
from altoflow.compiler import load_target
from altoflow.runtime import partials as partial_buffers
from altoflow.runtime.supervisor import Supervisor
from altoflow.server import LocalIngress, ServedIngress, create_app, serve_in_thread

pytestmark = pytest.mark.timeout(120)

PIPES = Path(__file__).resolve().parent.parent / "pipelines"
PARTIALS = str(PIPES / "partials.py")
sys.path.insert(0, str(PIPES))
import partials as pipes  # noqa: E402

QUESTIONS = ["water boils at 100 C", "ice is cold", "one"]


def key(event: Event) -> tuple:
    return event.stage, tuple(event.ancestry.items())


async def _read(stream) -> list[Event]:
    return [e async for e in stream]


def check_events(events: list[Event], question: str) -> None:
    """Partials before their item's output, joining to the value; outputs as altoflow.run's."""
    joined: dict[tuple, str] = {}
    outputs: dict[tuple, object] = {}
    for event in events:
        if event.type == "partial":
            assert key(event) not in outputs, f"a partial after its item's output: {event}"
            joined[key(event)] = joined.get(key(event), "") + event.delta
        elif event.type == "output":
            outputs[key(event)] = event.value
    assert events[-1].type == "done", events[-1]
    want = pipes.expected(question)
    words = question.split()
    assert joined[("answer", ())] == outputs[("answer", ())] == want["answer"]
    assert joined[("claims", ())] == "".join(f"[{w}]" for w in words)
    for i, word in enumerate(words):
        k = ("shout", (("claim", i),))
        assert joined[k] == outputs[k] == word.upper()
    levels = {s.name: s.levels_out for s in load_target(PARTIALS).compiled.plan.outputs}
    assert af.Result(events, levels).to_dict() == af.run(PARTIALS, question=question).to_dict()


@pytest.mark.parametrize("inline", [
    pytest.param(frozenset(), id="processes"),
    # The async answer and the sync generator in the router's process (answer hands claims
    # its value as an object), shout and joined as processes: both kinds deliver.
    pytest.param(frozenset({"answer", "claims", "flooded"}), id="mixed"),
])
def test_the_router_delivers_partials_before_outputs_from_every_kind_of_replica(inline) -> None:
    compiled = load_target(PARTIALS).compiled

    async def main() -> list[list[Event]]:
        async with Supervisor(compiled, PARTIALS, replicas={"shout": 2}, inline=inline) as sup:
            await sup.wait_ready()
            streams = [sup.router.submit({"question": q}) for q in QUESTIONS]  # at once
            return await asyncio.wait_for(asyncio.gather(*map(_read, streams)), 60)

    for question, events in zip(QUESTIONS, asyncio.run(main())):
        check_events(events, question)


def test_inline_replicas_make_no_partials_for_a_request_whose_client_wants_none(monkeypatch) -> None:
    # Requests with and without partials at once, on inline replicas (async, sync generator
    # in threads and then inline, sync map): each gets its own events, and a request whose
    # client asked for none costs no PARTIAL frame at all, not one made and then dropped.
    from altoflow.runtime.router import Router

    compiled = load_target(PARTIALS).compiled
    framed: list[int] = []
    deliver = Router._partial

    def counted(self, stage, anc, payload):
        framed.append(anc[0])
        deliver(self, stage, anc, payload)

    monkeypatch.setattr(Router, "_partial", counted)

    async def main():
        async with Supervisor(compiled, PARTIALS, replicas={"shout": 2},
                              inline=frozenset({"all"})) as sup:
            await sup.wait_ready()
            wants = [i % 2 == 0 for i in range(2 * len(QUESTIONS))]
            streams = [sup.router.submit({"question": QUESTIONS[i % len(QUESTIONS)]}, partials=w)
                       for i, w in enumerate(wants)]
            ids = [stream.request_id for stream in streams]
            events = await asyncio.wait_for(asyncio.gather(*map(_read, streams)), 60)
            return wants, ids, events

    wants, ids, events = asyncio.run(main())
    levels = {s.name: s.levels_out for s in compiled.plan.outputs}
    for i, (want, request, seen) in enumerate(zip(wants, ids, events)):
        question = QUESTIONS[i % len(QUESTIONS)]
        if want:
            check_events(seen, question)
            assert request in framed
        else:
            assert [e for e in seen if e.type == "partial"] == []
            assert af.Result(seen, levels).to_dict() == af.run(PARTIALS, question=question).to_dict()
            assert request not in framed


def test_a_client_that_reads_nothing_makes_the_router_hold_a_bounded_buffer(monkeypatch) -> None:
    monkeypatch.setattr(partial_buffers, "PARTIAL_BUFFER_CHARS", 10_000)
    compiled = load_target(PARTIALS).compiled

    async def main() -> list[Event]:
        async with Supervisor(compiled, PARTIALS, inline=frozenset({"all"})) as sup:
            await sup.wait_ready()
            stream = sup.router.submit({"question": "a b", "flood": 3000})  # 300,000 characters
            for _ in range(3000):
                if not sup.router.requests:  # it ended, while nobody read a single event
                    break
                await asyncio.sleep(0.01)
            return [e async for e in stream]  # all of it was held for the client until now

    events = asyncio.run(main())
    partials = [e for e in events if e.type == "partial"]
    assert len(partials) <= 5  # one per item that streams (answer, claims, 2 shouts, flooded)
    assert sum(len(e.delta) for e in partials) <= 10_000  # the cap
    flooded = [e for e in events if e.stage == "flooded"]
    text = "".join(e.delta for e in flooded if e.type == "partial")
    want = pipes.expected("a b", 3000)["flooded"]
    assert flooded[-1].type == "output" and flooded[-1].value == want  # the output is whole
    assert text and want.startswith(text) and len(text) <= 10_000  # a prefix, never a hole
    assert events[-1].type == "done"


def _sse(body: str) -> list[tuple[str, dict]]:
    """Parse a text/event-stream body strictly: blank-line separated events of one ``event:``
    line and one ``data:`` line each."""
    assert body.endswith("\n\n")
    out = []
    for block in body[:-2].split("\n\n"):
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        name, data = lines[0][len("event: "):], json.loads(lines[1][len("data: "):])
        assert data["type"] == name
        out.append((name, data))
    return out


def _check_http(url: str) -> None:
    question = QUESTIONS[0]
    with Client(url, timeout=30) as client:
        check_events(list(client.stream(question=question)), question)  # the client yields them
        assert client.run(question=question).to_dict() == af.run(PARTIALS, question=question).to_dict()
    ndjson = httpx.post(url + "/v1/run", json={"question": question}, timeout=30)
    assert ndjson.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in ndjson.text.splitlines()]
    check_events([Event.from_json(line) for line in lines], question)
    assert {"type", "stage", "ancestry", "delta"} == {k for line in lines if line["type"] == "partial"
                                                      for k in line}
    sse = httpx.post(url + "/v1/run", json={"question": question}, timeout=30,
                     headers={"Accept": "text/event-stream"})
    assert sse.status_code == 200 and sse.headers["content-type"] == "text/event-stream"
    events = _sse(sse.text)
    # The same events as NDJSON, in the same form; the last one has the request's id.
    assert [name for name, _ in events][-1] == "done"
    assert events[-1][1]["request_id"] == sse.headers["x-request-id"]
    check_events([Event.from_json(data) for _, data in events], question)
    strip = lambda objs: sorted(json.dumps({k: v for k, v in o.items() if k != "request_id"}, sort_keys=True)
                                for o in objs if o["type"] != "partial")
    assert strip(data for _, data in events) == strip(lines)
    # A client that wants no previews (Client.run asks so) gets every other event, as they are.
    for flag in ("false", "0", "off"):
        bare = httpx.post(url + f"/v1/run?partials={flag}", json={"question": question}, timeout=30)
        plain = [json.loads(line) for line in bare.text.splitlines()]
        assert not [o for o in plain if o["type"] == "partial"], plain
        assert strip(plain) == strip(lines)
    both = httpx.post(url + "/v1/run?partials=true", json={"question": question}, timeout=30)
    assert any(json.loads(line)["type"] == "partial" for line in both.text.splitlines())
    bad = httpx.post(url + "/v1/run?partials=maybe", json={"question": question}, timeout=30)
    assert bad.status_code == 422 and "partials='maybe'" in bad.json()["detail"]


def test_http_streams_partials_as_ndjson_and_as_sse_under_local_ingress() -> None:
    with serve_in_thread(create_app(LocalIngress(PARTIALS))) as url:
        _check_http(url)


def test_http_streams_partials_as_ndjson_and_as_sse_under_served_ingress() -> None:
    with serve_in_thread(create_app(ServedIngress(PARTIALS))) as url:
        _check_http(url)


def test_a_stage_failure_is_an_sse_error_event_and_a_refusal_stays_json() -> None:
    failing = str(PIPES / "failing.py")
    with serve_in_thread(create_app(LocalIngress(failing))) as url:
        sse = {"Accept": "text/event-stream"}
        resp = httpx.post(url + "/v1/run", json={"text": "ok bad fine"}, timeout=30, headers=sse)
        name, data = _sse(resp.text)[-1]
        assert (name, data["stage"], data["exc_type"]) == ("error", "checked", "ValueError")
        assert data["request_id"] == resp.headers["x-request-id"]
        resp = httpx.post(url + "/v1/run", json={"txt": "a"}, timeout=30, headers=sse)
        assert resp.status_code == 422 and "text" in resp.json()["detail"]  # before any event
