"""``altoflow.partial``: stages stream text deltas as ``partial`` events, in-process.

What a user relies on: each item's partials arrive before its output, in the order they were
sent, and join to what the stage streamed; no stage downstream sees them; ``Result`` leaves them
out (so results with partials equal results without); calling it where it cannot work says so;
a slow reader's partials are merged and capped, never an unbounded buffer or a text with a hole.
The served runtime's side is in tests/server/test_partials_served.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner

import altoflow as af
from altoflow import stage
from altoflow._result import Event, encode_event, partial_event
from altoflow.cli import app as cli_app
from altoflow.compiler import load_target
from altoflow.lm import LM
from altoflow.runtime.local import execute
from altoflow.runtime.partials import PartialBuffer
from altoflow.server.sse import sse_frame, wants_sse

PIPES = Path(__file__).resolve().parent / "pipelines"
PARTIALS = str(PIPES / "partials.py")
sys.path.insert(0, str(PIPES))
import partials as pipes  # noqa: E402

QUESTION = "water boils at 100 C"


def events_of(target: Any, **fields: Any) -> list[Event]:
    seen: list[Event] = []
    asyncio.run(execute(load_target(target).compiled, fields, on_event=seen.append))
    return seen


def key(event: Event) -> tuple:
    return event.stage, tuple(event.ancestry.items())


def check_partials_lead(events: list[Event]) -> dict[tuple, str]:
    """Every item's partials come before its output; returns each item's joined deltas."""
    joined: dict[tuple, str] = {}
    output_seen: set[tuple] = set()
    for event in events:
        if event.type == "partial":
            assert key(event) not in output_seen, f"a partial after its item's output: {event}"
            joined[key(event)] = joined.get(key(event), "") + event.delta
        elif event.type == "output":
            output_seen.add(key(event))
    assert events[-1].type == "done"
    return joined


# -- in-process ------------------------------------------------------------------------------


def test_partials_come_before_each_items_output_and_join_to_what_was_streamed() -> None:
    events = events_of(PARTIALS, question=QUESTION)
    joined = check_partials_lead(events)
    want = pipes.expected(QUESTION)
    words = QUESTION.split()
    assert joined[("answer", ())] == want["answer"]  # an async stage
    assert joined[("claims", ())] == "".join(f"[{w}]" for w in words)  # a sync generator, in threads
    for i, word in enumerate(words):  # a sync map: threads, then inline on the loop
        assert joined[("shout", (("claim", i),))] == word.upper()
    assert ("joined", ()) not in joined  # it calls no partial
    # Downstream stages got the whole values, never a partial.
    assert af.run(PARTIALS, question=QUESTION).to_dict() == want


def test_result_events_leave_partials_out_and_equal_a_run_without_them() -> None:
    result = af.run(PARTIALS, question=QUESTION)
    assert all(e.type == "output" for e in result.events)
    outputs = [e for e in events_of(PARTIALS, question=QUESTION) if e.type == "output"]
    key_value = lambda e: (key(e), json.dumps(e.value))
    assert sorted(map(key_value, result.events)) == sorted(map(key_value, outputs))


def test_partial_outside_a_stage_says_where_to_call_it() -> None:
    with pytest.raises(RuntimeError, match=r"altoflow.partial\(\) was called outside a stage.*"
                                           r"call it from the stage's own code"):
        af.partial("hello")
    # A stage called as the plain function it still is: no invocation, the same error.
    with pytest.raises(RuntimeError, match="outside a stage"):
        asyncio.run(pipes.answer(question="a b"))


def test_partial_takes_only_text_of_a_bounded_size() -> None:
    @stage(output=True)
    def numbers(n: int) -> int:
        af.partial(n)  # type: ignore[arg-type]
        return n

    with pytest.raises(af.StageError, match=r"takes a str, not int, in stage 'numbers'"):
        af.run(af.Pipeline([numbers]), n=3)

    @stage(output=True)
    def huge(n: int) -> int:
        af.partial("x" * n)
        return n

    with pytest.raises(af.StageError, match=r"got 70000 characters in stage 'huge', more than one "
                                            r"call takes \(65536\); stream the text in smaller"):
        af.run(af.Pipeline([huge]), n=70_000)
    assert af.run(af.Pipeline([huge]), n=65_536)["huge"] == 65_536


def test_partial_from_a_task_that_outlives_its_invocation_is_refused() -> None:
    late: list[BaseException] = []

    @stage(output=True)
    async def leaky(n: int) -> int:
        async def after() -> None:
            await asyncio.sleep(0.01)
            try:
                af.partial("too late")
            except RuntimeError as exc:
                late.append(exc)

        asyncio.get_running_loop().create_task(after())
        return n

    async def main() -> list[Event]:
        seen: list[Event] = []
        await execute(af.Pipeline([leaky]).compiled, {"n": 1}, on_event=seen.append)
        await asyncio.sleep(0.05)
        return seen

    seen = asyncio.run(main())
    assert [e.type for e in seen] == ["output", "done"]
    assert len(late) == 1 and "after its stage's invocation had ended" in str(late[0])


def test_altoflow_run_events_prints_partial_lines_before_the_output() -> None:
    result = CliRunner().invoke(cli_app, ["run", PARTIALS, "--events", "--input",
                                          json.dumps({"question": "a b"})])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    answer = [line for line in lines if line.get("stage") == "answer"]
    assert answer == [
        {"type": "partial", "stage": "answer", "ancestry": {}, "delta": "a "},
        {"type": "partial", "stage": "answer", "ancestry": {}, "delta": "b "},
        {"type": "output", "stage": "answer", "ancestry": {}, "value": "a b "},
    ]


# -- the LM interface ------------------------------------------------------------------------


class Scripted(LM):
    """An engine that writes the given deltas."""

    name = "scripted"

    def __init__(self, deltas: list[str]) -> None:
        super().__init__()
        self.deltas = deltas

    async def _generate(self, prompt, sampling):  # type: ignore[no-untyped-def]
        for delta in self.deltas:
            await anyio.sleep(0)
            yield delta


def test_lm_complete_with_partial_streams_each_delta_of_the_calling_stage() -> None:
    deltas = ["The ", "sky ", "is ", "blue", "."]

    @stage(output=True)
    async def reply(question: str) -> str:
        return await Scripted(deltas).complete(question, partial=True)

    @stage(output=True)
    async def length(reply: str) -> int:
        return len(reply)

    events = events_of(af.Pipeline([reply, length]), question="sky?")
    assert [(e.type, e.stage, e.delta if e.type == "partial" else e.value) for e in events[:-1]
            if e.stage == "reply"] == [*(("partial", "reply", d) for d in deltas),
                                       ("output", "reply", "The sky is blue.")]
    assert af.run(af.Pipeline([reply, length]), question="sky?")["length"] == 16
    # Outside a stage (the stage called as a function, in a unit test) it just returns the text.
    assert asyncio.run(reply(question="sky?")) == "The sky is blue."


def test_watched_says_whether_the_running_stages_partials_go_anywhere() -> None:
    # What an LM client's complete(partial=True) asks once, instead of making every delta.
    from altoflow._partial import watched

    @stage(output=True)
    async def probe(question: str) -> bool:
        return watched()

    @stage(output=True)
    def probe_sync(question: str) -> bool:  # in a worker thread: the mark travels there too
        return watched()

    pipeline = af.Pipeline([probe, probe_sync])
    assert watched() is False  # outside a stage
    assert af.run(pipeline, question="q").to_dict() == {"probe": False, "probe_sync": False}
    outputs = {e.stage: e.value for e in events_of(pipeline, question="q") if e.type == "output"}
    assert outputs == {"probe": True, "probe_sync": True}  # on_event watches


# -- the buffer between a request's producer and a slow consumer ---------------------------------


def test_partials_of_an_item_merge_while_unread_and_stay_in_order() -> None:
    buf = PartialBuffer()
    first = partial_event("a", {"claim": 0}, "x")
    assert buf.offer(first)
    assert not buf.offer(partial_event("a", {"claim": 0}, "y"))  # merged into the unread one
    other = partial_event("a", {"claim": 1}, "p")
    assert buf.offer(other)  # another item: an event of its own
    assert buf.read(first).delta == "xy" and buf.unread_chars == 1
    after = partial_event("a", {"claim": 0}, "z")
    assert buf.offer(after)  # read already: the next delta is a new event
    assert buf.read(other).delta == "p" and buf.read(after).delta == "z"
    assert buf.unread_chars == 0


def test_the_cap_drops_an_items_rest_so_what_a_client_joins_is_a_prefix() -> None:
    buf = PartialBuffer(limit=10)
    events = [partial_event("s", {}, "abcd") for _ in range(4)]
    taken = [e for e in events if buf.offer(e)]
    assert buf.unread_chars <= 10 and buf.dropped == 2  # the third would pass the cap, the fourth follows
    assert [buf.read(e).delta for e in taken] == ["abcdabcd"]
    # Room again, but the item stays cut: no hole in its text. Other items go on.
    assert not buf.offer(partial_event("s", {}, "efgh"))
    assert buf.offer(partial_event("t", {}, "ok"))


def test_a_reader_that_reads_nothing_holds_a_bounded_buffer_in_process() -> None:
    """LocalIngress: a request whose client reads nothing until it ends."""
    from altoflow.server import LocalIngress

    async def main() -> list[Event]:
        async with LocalIngress(PARTIALS) as ingress:
            stream = ingress.submit({"question": "a", "flood": 5000})  # 500,000 characters
            while not ingress.stats.latency.count:  # until the request has ended
                await asyncio.sleep(0.01)
            return [e async for e in stream]

    events = asyncio.run(main())
    flooded = [e for e in events if e.stage == "flooded"]
    partials = [e for e in flooded if e.type == "partial"]
    text = "".join(e.delta for e in partials)
    want = pipes.expected("a", 5000)["flooded"]
    assert flooded[-1].type == "output" and flooded[-1].value == want  # the value, whole
    assert len(partials) == 1 and 0 < len(text) <= 64 * 1024 and want.startswith(text)


# -- the JSON and SSE forms --------------------------------------------------------------------


def test_a_partial_event_has_its_ndjson_line_and_reads_back() -> None:
    event = partial_event("answer", {"claim": 2}, "tok")
    line, ended = encode_event(event, request_id="r-1")
    assert not ended
    assert json.loads(line) == {"type": "partial", "stage": "answer", "ancestry": {"claim": 2},
                                "delta": "tok"}  # no request_id: only the last line has it
    assert Event.from_json(json.loads(line)) == event
    # A lone surrogate (an inline stage's str) is escaped rather than failing the stream.
    line, _ = encode_event(partial_event("answer", {}, "a\ud800b"))
    assert json.loads(line)["delta"] == "a\\ud800b"


@pytest.mark.parametrize(("accept", "sse"), [
    ("text/event-stream", True),
    ("text/event-stream, application/x-ndjson;q=0.5", True),
    ("application/x-ndjson, text/event-stream;q=0.9", False),
    ("text/event-stream;q=0", False),
    ("application/json", False),
    ("", False),
    ("*/*", False),
])
def test_accept_header_picks_sse_only_when_asked_for(accept: str, sse: bool) -> None:
    assert wants_sse(accept) is sse


def test_sse_frame_names_the_event_and_carries_its_json_on_one_data_line() -> None:
    line, _ = encode_event(partial_event("answer", {}, "two\nlines"))
    assert sse_frame("partial", line) == (
        b'event: partial\ndata: {"type": "partial", "stage": "answer", "ancestry": {}, '
        b'"delta": "two\\nlines"}\n\n')
