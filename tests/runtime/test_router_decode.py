"""The router never unpickles: output payloads pass through it as bytes, and only the request's
consumer decodes them, as it reads its stream (with pickle, under ``allow_pickle``)."""

from __future__ import annotations

import asyncio
import pickle
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

import altoflow as af
from altoflow.compiler import load_target
from altoflow import wire as fr
from altoflow.wire import Codec
from altoflow.runtime.router import Router, _Protocol
from altoflow.server.served import ServedIngress

RATIOS = str(Path(__file__).resolve().parent.parent / "server" / "serving_apps.py") + ":ratios"


class FakeTransport:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _replica(router: Router, stage: str) -> _Protocol:
    proto = _Protocol(router)
    proto.connection_made(FakeTransport())
    proto.data_received(fr.encode_frame(fr.Kind.HELLO, stage=router.stage_index[stage],
                                        body=fr.Hello(stage=stage, slot=0)))
    return proto


def test_the_router_refuses_a_codec_that_unpickles() -> None:
    with pytest.raises(ValueError, match="never unpickles.*output_codec"):
        Router(load_target(RATIOS).compiled, codec=Codec(allow_pickle=True))


def test_frames_in_do_not_unpickle_reading_the_stream_does(monkeypatch) -> None:
    router = Router(load_target(RATIOS).compiled, output_codec=Codec(allow_pickle=True))
    replica = _replica(router, "third")
    loads = pickle.loads
    phase = ["setup"]
    calls: list[str] = []

    def watched(data: Any, /, **kw: Any) -> Any:
        calls.append(phase[0])
        return loads(data, **kw)

    monkeypatch.setattr(pickle, "loads", watched)

    async def main() -> list[af.Event]:
        stream = router.submit({"n": 2})
        payload = Codec(allow_pickle=True).encode(Fraction(2, 3))
        phase[0] = "frames"
        replica.data_received(fr.encode_frame(fr.Kind.DATA, stage=0, request_id=stream.request_id,
                                              payload=payload)
                              + fr.encode_frame(fr.Kind.ACK, stage=0, request_id=stream.request_id))
        phase[0] = "reading"
        return [e async for e in stream]

    events = asyncio.run(main())
    assert [(e.type, e.value) for e in events] == [("output", Fraction(2, 3)), ("done", None)]
    assert calls == ["reading"]


def test_a_payload_that_cannot_be_decoded_fails_its_request_only() -> None:
    router = Router(load_target(RATIOS).compiled)  # no pickle anywhere: the payload is refused
    replica = _replica(router, "third")
    payload = Codec(allow_pickle=True).encode(Fraction(1, 3))

    async def main() -> tuple[list[af.Event], list[af.Event]]:
        bad, good = router.submit({"n": 1}), router.submit({"n": 3})
        for stream, body in ((bad, payload), (good, Codec().encode(1))):
            replica.data_received(
                fr.encode_frame(fr.Kind.DATA, stage=0, request_id=stream.request_id, payload=body)
                + fr.encode_frame(fr.Kind.ACK, stage=0, request_id=stream.request_id))
        return [e async for e in bad], [e async for e in good]

    bad, good = asyncio.run(main())
    assert [e.type for e in bad] == ["error"] and bad[0].exc_type == "DecodeError"
    assert "stage 'third' produced a value this server cannot decode" in bad[0].error
    assert "refuses to unpickle" in bad[0].error
    assert [(e.type, e.value) for e in good] == [("output", 1), ("done", None)]
    assert not replica.conn.transport.is_closing()


@pytest.mark.timeout(120)
def test_served_with_allow_pickle_the_router_process_unpickles_only_in_the_consumers_task(
        monkeypatch) -> None:
    loads = pickle.loads
    callers: list[str | None] = []

    def watched(data: Any, /, **kw: Any) -> Any:
        # Frames are handled in the protocol's callbacks, outside any task; a consumer reads
        # its stream in a task of its own.
        task = asyncio.current_task()
        callers.append(None if task is None else task.get_name())
        return loads(data, **kw)

    monkeypatch.setattr(pickle, "loads", watched)

    async def main() -> list[af.Event]:
        async with ServedIngress(RATIOS, allow_pickle=True) as ingress:
            assert ingress.router.codec.allow_pickle is False
            return await asyncio.wait_for(
                asyncio.create_task(_read(ingress.submit({"n": 2})), name="consumer"), 60)

    events = asyncio.run(main())
    assert [(e.type, e.value) for e in events] == [("output", Fraction(2, 3)), ("done", None)]
    assert callers == ["consumer"]


async def _read(stream: Any) -> list[af.Event]:
    return [e async for e in stream]
