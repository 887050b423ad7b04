"""EventStreamResponse on its own: what it hands the ASGI server, chunk by chunk."""

from __future__ import annotations

import asyncio
import json
import sys

import anyio
import anyio.lowlevel
import pytest

import altoflow as af
from altoflow.runtime.stream import EventChannel, RequestStream
from altoflow.server.http import EventStreamResponse

pytestmark = [pytest.mark.timeout(30), pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _serve(response: EventStreamResponse, feed, on_body=None) -> list[bytes]:
    """Run the response as an ASGI server would; ``feed`` sends the events meanwhile, and
    ``on_body`` sees each body as it is sent. The bodies, in order; the last ends the response."""
    bodies: list[bytes] = []
    ended: list[bool] = []
    disconnect = anyio.Event()

    async def receive() -> dict:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        assert not ended, "sent after the end of the response"
        if message["type"] == "http.response.body":
            assert message["body"], "an empty chunk"  # the last line carries more_body=False
            bodies.append(message["body"])
            if on_body is not None:
                on_body(message["body"])
            if not message["more_body"]:
                ended.append(True)
        await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(feed)
        with anyio.fail_after(10):
            await response({"type": "http"}, receive, send)
        disconnect.set()
    assert ended == [True]
    return bodies


def _outputs(n: int, size: int = 8) -> list[af.Event]:
    return [af.Event("output", "s", {"i": i}, "x" * size) for i in range(n)]


def _buffered(events: list[af.Event]) -> RequestStream:
    """A request's stream with all of ``events`` buffered already, and ended."""
    channel = EventChannel()
    for event in events:
        channel.send_nowait(event)
    channel.end()
    return RequestStream(channel, lambda: None, 7)


async def _nothing() -> None:
    pass


async def test_events_already_buffered_go_in_one_chunk_and_the_lines_are_unchanged() -> None:
    events = _outputs(5) + [af.Event("done")]
    response = EventStreamResponse(_buffered(events))
    bodies = await _serve(response, _nothing)
    assert bodies == [b"".join(response._line(e)[0] for e in events)]
    lines = bodies[0].decode().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["output"] * 5 + ["done"]
    assert [json.loads(line)["value"] for line in lines[:5]] == ["x" * 8] * 5


async def test_an_event_is_written_at_once_without_waiting_for_the_next() -> None:
    channel = EventChannel()
    written: list[int] = []
    response = EventStreamResponse(RequestStream(channel, lambda: None, 7))

    async def feed() -> None:
        for event in _outputs(3):
            channel.send_nowait(event)
            while len(written) == 0 or written[-1] != event.ancestry["i"]:
                await anyio.sleep(0.001)  # the chunk holding it went out before the next is sent
        channel.send_nowait(af.Event("done"))
        channel.end()

    def on_body(body: bytes) -> None:
        last = json.loads(body.splitlines()[-1])
        if last["type"] == "output":
            written.append(last["ancestry"]["i"])

    bodies = await _serve(response, feed, on_body)
    assert len(bodies) == 4 and written == [0, 1, 2]


async def test_a_chunk_holds_at_most_about_coalesce_bytes() -> None:
    size, n = 10_000, 30
    bodies = await _serve(EventStreamResponse(_buffered(_outputs(n, size) + [af.Event("done")])),
                          _nothing)
    assert len(bodies) > 1
    assert all(len(b) < EventStreamResponse.COALESCE_BYTES + size + 200 for b in bodies)
    lines = b"".join(bodies).decode().splitlines()
    assert len(lines) == n + 1 and json.loads(lines[-1])["type"] == "done"


async def test_sse_frames_coalesce_the_same_way() -> None:
    events = _outputs(2) + [af.Event("done")]
    response = EventStreamResponse(_buffered(events), sse=True)
    bodies = await _serve(response, _nothing)
    assert len(bodies) == 1
    assert bodies[0] == b"".join(response._line(e)[0] for e in events)  # frame after frame
    assert bodies[0].count(b"event: output") == 2 and bodies[0].count(b"event: done") == 1


async def test_a_disconnect_ends_the_response_closes_the_stream_and_leaves_the_task_uncancelled() -> None:
    closed = []
    channel = EventChannel()  # a request whose stage is still working: nothing comes
    stream = RequestStream(channel, lambda: closed.append(True), 7)
    gone = anyio.Event()

    async def receive() -> dict:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            gone.set()  # the client goes away as the answer starts

    with anyio.fail_after(10):
        await EventStreamResponse(stream, "r")({"type": "http"}, receive, send)
    assert closed == [True]  # the ingress was told: it cancels the request
    if sys.version_info >= (3, 11):  # the server's task goes on as if nothing had cancelled it
        assert asyncio.current_task().cancelling() == 0
    await anyio.lowlevel.checkpoint()  # and it is not cancelled at its next one either


async def test_a_cancellation_that_is_not_a_disconnect_goes_on_to_the_server() -> None:
    closed = []
    stream = RequestStream(EventChannel(), lambda: closed.append(True), 7)
    never = anyio.Event()

    async def receive() -> dict:
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        pass

    task = asyncio.ensure_future(EventStreamResponse(stream, "r")({"type": "http"}, receive, send))
    await anyio.sleep(0.05)
    task.cancel()  # the server cancels the request's task (it shuts down)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == [True]
