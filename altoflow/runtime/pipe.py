"""Two asyncio protocols joined in memory: an inline replica's connection to its router.

An inline replica (``altoflow serve --inline STAGE``) is a ``Worker`` that runs in the router's
own process and event loop. It speaks the same frames as a replica process, so the router and
its core see a replica like any other (HELLO, credits, keyed routing, progress), but its bytes
are handed over by a call on the next loop turn instead of crossing a socket: no system call, no
process wake-up. Delivery is always deferred to the loop (``call_soon``), never reentrant, so
neither side runs inside the other's write.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable


class MemoryTransport(asyncio.Transport):
    """One end of a pipe: ``write`` delivers to the peer's protocol on the next loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._closing = False
        self.peer: MemoryTransport | None = None
        self.protocol: asyncio.Protocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self.peer is None or self.peer._closing:
            return
        self._loop.call_soon(self.peer._deliver, bytes(data))

    def _deliver(self, data: bytes) -> None:
        if not self._closing and self.protocol is not None:
            self.protocol.data_received(data)

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
