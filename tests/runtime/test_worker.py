"""A worker process's frame handling, driven in-process over a fake transport."""

from __future__ import annotations

import asyncio
from pathlib import Path

from altoflow import wire as fr
from altoflow.wire import Codec
from altoflow.runtime.worker import Worker

TARGET = str(Path(__file__).resolve().parent.parent / "pipelines" / "slow.py")


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _worker() -> tuple[Worker, _Transport]:
    worker = Worker(TARGET, "slow", 0, Codec())
    worker.transport = _Transport()
    return worker, worker.transport


def _frames_out(transport: _Transport) -> list[fr.Frame]:
    return fr.FrameReader().feed(b"".join(transport.writes))


def _feed(worker: Worker, *frames: bytes) -> None:
    for frame in worker.reader.feed(b"".join(frames)):
        worker.handle(frame)


def _data(request: int, item: int, value: int) -> bytes:
    index = 1  # `slow` in the plan of slow.py
    return fr.encode_frame(fr.Kind.DATA, stage=index, request_id=request, ancestry=(item,),
                           payload=Codec().encode(value))


def test_an_input_cancelled_before_it_started_is_still_acknowledged():
    asyncio.run(_cancelled_before_start())


async def _cancelled_before_start():
    # DATA and CANCEL in one read: the invocation's task is cancelled before its first step, so
    # the stage never runs; the router still needs its ACK to get the credit back.
    worker, transport = _worker()
    _feed(worker, _data(7, 3, 1), fr.encode_frame(fr.Kind.CANCEL, request_id=7))
    for _ in range(5):
        await asyncio.sleep(0)
    out = _frames_out(transport)
    assert [(f.kind, f.request_id, f.ancestry, f.status) for f in out] == [(fr.Kind.ACK, 7, (3,), 1)]
    assert worker.running == {} and worker.tasks == {}


def test_a_running_input_that_is_cancelled_is_acknowledged_once():
    asyncio.run(_cancelled_while_running())


async def _cancelled_while_running():
    worker, transport = _worker()
    _feed(worker, _data(7, 0, 1), _data(8, 0, 2))
    await asyncio.sleep(0.01)  # both are inside the stage's sleep now
    _feed(worker, fr.encode_frame(fr.Kind.CANCEL, request_id=7))
    await asyncio.sleep(0.2)
    out = _frames_out(transport)
    acks = [(f.request_id, f.status) for f in out if f.kind is fr.Kind.ACK]
    assert sorted(acks) == [(7, 1), (8, 0)]
    assert [(f.request_id, Codec().decode(f.payload)) for f in out if f.kind is fr.Kind.DATA] == [(8, 20)]
    assert worker.running == {} and worker.tasks == {}


def test_inputs_beyond_concurrency_wait_for_a_slot():
    asyncio.run(_beyond_concurrency())


async def _beyond_concurrency():
    # `slow` has concurrency 4; a router keeps to that, but a worker must not rely on it.
    worker, transport = _worker()
    _feed(worker, *(_data(1, i, i) for i in range(6)), _data(2, 0, 100))
    assert len(worker.running) == 4 and len(worker.backlog) == 3
    _feed(worker, fr.encode_frame(fr.Kind.CANCEL, request_id=2))  # still waiting: dropped at once
    assert len(worker.backlog) == 2
    for _ in range(50):
        await asyncio.sleep(0.02)
        if not worker.running:
            break
    out = _frames_out(transport)
    assert sorted((f.request_id, f.ancestry, f.status) for f in out if f.kind is fr.Kind.ACK) == [
        (1, (i,), 0) for i in range(6)] + [(2, (0,), 1)]
    assert sorted(Codec().decode(f.payload) for f in out if f.kind is fr.Kind.DATA) == [i * 10 for i in range(6)]


def test_an_input_that_does_not_decode_fails_naming_the_parameter():
    asyncio.run(_undecodable())


async def _undecodable():
    worker, transport = _worker()
    _feed(worker, fr.encode_frame(fr.Kind.DATA, stage=1, request_id=5, ancestry=(0,), payload=b"\xee"))
    for _ in range(5):
        await asyncio.sleep(0)
    (ack,) = _frames_out(transport)
    assert ack.kind is fr.Kind.ACK and ack.status == 2
    assert "cannot decode parameter 'items'" in ack.body.message and "must return" in ack.body.message
