"""The in-memory link of an inline replica (``runtime.pipe``): what arrives, when, in what order."""

from __future__ import annotations

import asyncio

from altoflow.runtime.pipe import MemoryTransport, connect_pair


class _Reader(asyncio.Protocol):
    def __init__(self) -> None:
        self.got: list[list] = []
        self.lost = False

    def data_received(self, data) -> None:  # type: ignore[override]
        self.got.append(list(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


async def _pair() -> tuple[MemoryTransport, _Reader]:
    ours, theirs = connect_pair(_Reader, _Reader)
    return ours, theirs.protocol  # type: ignore[return-value]


def test_write_now_delivers_inside_the_call_and_write_on_the_next_turn():
    async def main():
        transport, peer = await _pair()
        transport.write_now(["a"])
        assert peer.got == [["a"]]
        transport.write(["b"])
        assert peer.got == [["a"]]
        await asyncio.sleep(0)
        assert peer.got == [["a"], ["b"]]

    asyncio.run(main())


def test_write_now_queues_behind_a_write_still_on_its_way():
    # The frames of one direction keep their order, however the two are mixed.
    async def main():
        transport, peer = await _pair()
        transport.write(["a"])
        transport.write(["b"])
        transport.write_now(["c"])
        assert peer.got == []
        await asyncio.sleep(0)
        assert peer.got == [["a", "b", "c"]]
        transport.write_now(["d"])
        assert peer.got == [["a", "b", "c"], ["d"]]

    asyncio.run(main())


def test_nothing_is_delivered_once_either_end_is_closed():
    async def main():
        transport, peer = await _pair()
        transport.write(["on its way"])
        transport.close()
        transport.write_now(["after"])
        transport.write(["after"])
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert peer.got == [] and peer.lost

    asyncio.run(main())
