"""An inline replica's connection to its router: frames handed over as objects, in memory.

An inline replica (``altoflow serve --inline STAGE``) is a ``Worker`` that runs in the router's
own process and event loop. It speaks the same frames as a replica process, so the router and
its core see a replica like any other (HELLO, credits, keyed routing, progress), but nothing is
encoded: each side queues ``Frame`` objects (``FrameList``, in place of a ``FrameWriter``), and
a flush hands the list to the other side's protocol, which reads it with ``FrameList.feed`` (in
place of a ``FrameReader``).

Each side's flush is a loop callback of its own (the worker's ``_flush``, the router's
``_flush_all``), so it delivers at once (``MemoryTransport.write_now``): the peer's protocol
reads the frames inside that callback, where a socket's bytes would have gone to the kernel, and
the peer answers with a flush of its own, later. Neither side's writes ever run the other's
code back into it. A plain ``write`` (a frame sent outside a flush) is delivered on the next
loop turn, and ``write_now`` queues behind one that is still on its way, so the frames of one
direction keep their order. One delivery per flush rather than a deferred one saves a loop
turn on each hop, and an item's path through inline stages crosses several hops.

Values skip the codec too where they can (operator chaining): an inline replica whose every
consumer is inline as well sends its outputs as ``Local(value)``, the Python object itself, and
the replica that takes it, or the request's consumer for an output stage, reads ``.value``
instead of decoding bytes. As in the reference executor (``altoflow.run``), which passes
values the same way, a stage that mutates its input changes what its other consumers see. An
output that goes on to a replica process or a remote one is encoded as always.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from altoflow.wire import Frame, Kind


class Local:
    """A value passed by reference between inline stages, in place of its encoded bytes."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Local({self.value!r})"


class _Inputs(Frame):
    """A DATA frame to an inline replica: ``payload`` is the tuple of its parts, one per
    parameter, each bytes or ``Local``."""

    __slots__ = ()

    def parts(self) -> tuple[Any, ...]:
        return self.payload  # type: ignore[return-value]


class FrameList:
    """Both ends of the in-memory link: queues frames as objects (``FrameWriter``'s methods)
    and reads a delivered list back (``FrameReader.feed``)."""

    __slots__ = ("_frames",)

    def __init__(self) -> None:
        self._frames: list[Frame] = []

    def send_nowait(self, kind: Kind, **fields: Any) -> None:
        self._frames.append(Frame(kind, **fields))

    def item(self, kind: Kind, stage: int, request_id: int, ancestry: tuple[int, ...] = (),
             payload: Any = b"", **fields: Any) -> None:
        self._frames.append(Frame(kind, stage, request_id, tuple(ancestry), payload, **fields))

    def inputs(self, stage: int, request_id: int, ancestry: tuple[int, ...], parts: list[Any],
               trace: bytes = b"") -> None:
        self._frames.append(_Inputs(Kind.DATA, stage, request_id, tuple(ancestry), tuple(parts),
                                    trace=trace))

    def flush(self) -> list[Frame]:
        frames, self._frames = self._frames, []
        return frames

    @staticmethod
    def feed(frames: list[Frame]) -> list[Frame]:
        return frames


class MemoryTransport(asyncio.Transport):
    """One end of a pipe: ``write`` delivers a list of frames to the peer's protocol on the
    next loop turn, ``write_now`` at once (see the module's docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._closing = False
        self.peer: MemoryTransport | None = None
        self.protocol: asyncio.Protocol | None = None
        # Frames written with ``write`` and not delivered yet (their delivery is scheduled).
        self._outbox: list[Frame] | None = None

    def write(self, frames: Any) -> None:
        if self._closing or self.peer is None or self.peer._closing or not frames:
            return
        if self._outbox is not None:
            self._outbox.extend(frames)
            return
        self._outbox = list(frames)
        self._loop.call_soon(self._send_outbox)

    def write_now(self, frames: list[Frame]) -> None:
        """Deliver ``frames`` to the peer's protocol now, behind any ``write`` still on its way.
        Only from a flush, a loop callback that does nothing of its side's after it."""
        if self._closing or self.peer is None or self.peer._closing or not frames:
            return
        if self._outbox is not None:
            self._outbox.extend(frames)  # FIFO: they go with the earlier write
            return
        self.peer._deliver(frames)

    def _send_outbox(self) -> None:
        frames, self._outbox = self._outbox, None
        if frames and self.peer is not None:
            self.peer._deliver(frames)

    def _deliver(self, frames: list[Frame]) -> None:
        if not self._closing and self.protocol is not None:
            self.protocol.data_received(frames)  # type: ignore[arg-type]

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Close both ends; each protocol hears ``connection_lost`` on the next loop turn."""
        for end in (self, self.peer):
            if end is not None and not end._closing:
                end._closing = True
                if end.protocol is not None:
                    self._loop.call_soon(end.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def connect_pair(a: Callable[[], asyncio.Protocol],
                 b: Callable[[], asyncio.Protocol]) -> tuple[MemoryTransport, MemoryTransport]:
    """Make one protocol from each factory and join them; returns (a's transport, b's)."""
    loop = asyncio.get_running_loop()
    ta, tb = MemoryTransport(loop), MemoryTransport(loop)
    ta.peer, tb.peer = tb, ta
    ta.protocol, tb.protocol = a(), b()
    ta.protocol.connection_made(ta)
    tb.protocol.connection_made(tb)
    return ta, tb
