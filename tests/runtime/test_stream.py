"""EventChannel and RequestStream: a request's events on their way to its consumer."""

from __future__ import annotations

import anyio
import pytest

import altoflow as af
from altoflow.runtime.stream import EventChannel, RequestStream

pytestmark = [pytest.mark.timeout(30), pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _channel_stream(closed: list[int]) -> tuple[EventChannel, RequestStream]:
    channel = EventChannel()
    return channel, RequestStream(channel, lambda: closed.append(1), 7)


async def test_a_channel_delivers_buffered_events_then_ends() -> None:
    closed: list[int] = []
    channel, stream = _channel_stream(closed)
    events = [af.Event("output", "s", {"i": i}, i) for i in range(100)] + [af.Event("done")]
    for event in events:
        channel.send_nowait(event)
    channel.end()
    assert [e async for e in stream] == events
    assert closed == [1]  # read to its end: closed, once


async def test_a_reader_waits_for_events_sent_later() -> None:
    closed: list[int] = []
    channel, stream = _channel_stream(closed)
    got = []

    async def read() -> None:
        got.extend([e async for e in stream])

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        for i in range(3):
            await anyio.sleep(0.01)
            channel.send_nowait(af.Event("output", "s", {}, i))
        channel.end()
    assert [e.value for e in got] == [0, 1, 2]


async def test_reading_a_long_buffered_stream_lets_other_tasks_run_and_cancel_it() -> None:
    channel, stream = _channel_stream([])
    for i in range(10 * RequestStream.YIELD_EVERY):
        channel.send_nowait(af.Event("output", "s", {}, i))
    ticks = 0
    read = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.sleep(0)
        before = ticks
        async for _event in stream:
            read += 1
            if read == 5 * RequestStream.YIELD_EVERY:
                break
        assert ticks - before >= 4  # the reader passed through checkpoints on the way
        tg.cancel_scope.cancel()

    with anyio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(anyio.get_cancelled_exc_class()):
            async for _event in stream:
                read += 1
    assert read <= 6 * RequestStream.YIELD_EVERY  # the cancel landed within YIELD_EVERY events


async def test_closing_the_stream_drops_what_is_buffered_and_what_comes_later() -> None:
    closed: list[int] = []
    channel, stream = _channel_stream(closed)
    channel.send_nowait(af.Event("output", "s", {}, 1))
    await stream.aclose()
    channel.send_nowait(af.Event("output", "s", {}, 2))  # the producer has not noticed yet
    assert [e async for e in stream] == []
    assert closed == [1]



def _decode(event: af.Event) -> af.Event:
    if event.value == b"bad":
        return af.Event("error", event.stage, event.ancestry, error="cannot decode", exc_type="DecodeError")
    return af.Event("output", event.stage, event.ancestry, int(event.value))


async def test_decode_runs_on_outputs_as_they_are_read_and_a_failure_ends_the_stream() -> None:
    closed: list[int] = []
    channel = EventChannel()
    stream = RequestStream(channel, lambda: closed.append(1), 7, decode=_decode)
    for payload in (b"1", b"2", b"bad", b"3"):
        channel.send_nowait(af.Event("output", "s", {}, payload))
    channel.send_nowait(af.Event("done"))
    channel.end()
    got = [e async for e in stream]
    assert [e.value for e in got[:2]] == [1, 2]
    assert (got[2].type, got[2].error) == ("error", "cannot decode") and len(got) == 3
    assert closed == [1]  # the request was cancelled at the error


async def test_decode_leaves_done_and_error_events_alone() -> None:
    channel = EventChannel()
    stream = RequestStream(channel, lambda: None, 7, decode=_decode)
    channel.send_nowait(af.Event("error", "s", {}, error="boom"))
    channel.end()
    assert [e async for e in stream] == [af.Event("error", "s", {}, error="boom")]


async def test_a_channel_says_when_it_holds_its_limit_and_when_it_was_read_down_to_half() -> None:
    from altoflow.runtime.stream import EVENT_BYTES

    pressure: list[bool] = []
    channel = EventChannel(limit=4 * (EVENT_BYTES + 100), on_pressure=pressure.append)
    output = af.Event("output", "s", {}, bytes(100))  # an undecoded payload: 100 bytes
    for _ in range(3):
        channel.send_nowait(output)
    assert pressure == [] and channel.statistics().buffered_bytes == 3 * (EVENT_BYTES + 100)
    channel.send_nowait(output)
    channel.send_nowait(output)  # past the limit, it is said once
    assert pressure == [True] and channel.statistics().full
    for _ in range(2):
        channel.receive_nowait()
    assert pressure == [True]  # 3 left: above half the limit
    channel.receive_nowait()  # 2 left: half of it
    assert pressure == [True, False] and not channel.statistics().full
    assert channel.statistics().peak_bytes == 5 * (EVENT_BYTES + 100)
    channel.send_nowait(output)
    channel.send_nowait(output)
    assert pressure == [True, False, True]  # full again, below its peak
    channel.close()  # the consumer left: nothing is held for it
    assert channel.statistics().buffered_bytes == 0 and pressure == [True, False, True]
