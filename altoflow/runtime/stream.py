"""A request's events on their way to its consumer: ``EventSource``, ``EventChannel``, ``RequestStream``.

Every runtime hands out the same ``RequestStream`` of ``altoflow.Event``: outputs (and the
stages' ``partial`` events) as they happen, then exactly one ``done`` or ``error`` event,
unless the request was cancelled first.
The runtime fills a buffer (an ``EventChannel``, or an anyio memory stream) and the consumer,
say the HTTP layer, reads the stream; closing the stream cancels the request.

A stream may be given a ``decode`` step, run on each output event in the consumer's task as it
is read. The served runtime uses it to keep the router away from output values: the router
passes each output's payload bytes on unread, and the consumer's side turns them into values
(with pickle, when the server was started with ``--allow-pickle``: only a worker or the
request's consumer ever unpickles). An output that cannot be decoded ends its own request with
an ``error`` event, and no other.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import NamedTuple, Protocol

import anyio

from altoflow._result import Event
from altoflow.runtime.partials import PartialBuffer


class EventSource(Protocol):
    """The consumer's side of a request's event buffer, as ``RequestStream`` reads it.

    anyio's ``MemoryObjectReceiveStream`` is one; ``EventChannel`` is a cheaper one for
    ingresses that live on an asyncio loop. ``receive_nowait`` raises ``anyio.WouldBlock`` when
    nothing is buffered, and both raise ``anyio.EndOfStream`` once the producer has ended it.
    """

    def receive_nowait(self) -> Event: ...

    async def receive(self) -> Event: ...

    def close(self) -> None: ...


#: What one buffered event counts for in ``EventChannel``'s bytes, besides its payload's bytes.
EVENT_BYTES = 128


class ChannelStatistics(NamedTuple):
    events: int  # events buffered now
    buffered_bytes: int  # what they count for: payload bytes, plus EVENT_BYTES per event
    peak_bytes: int  # the most buffered_bytes at once
    full: bool  # past the limit, and not yet read down to half of it


class EventChannel:
    """A buffer of one request's events; producer and consumer share one asyncio loop.

    It counts what it holds in bytes: an event's payload, when that is bytes (the served
    router's outputs), plus ``EVENT_BYTES`` per event. With a ``limit`` it tells
    ``on_pressure(True)`` once it holds ``limit`` bytes or more, and ``on_pressure(False)`` once
    the consumer has read it down to half of that; the producer is to stop feeding it in between
    (the router pauses the request), since ``send_nowait`` itself never refuses an event.

    The router fills it from its protocol callbacks (``send_nowait``, then ``end``) and the
    request's consumer reads it through ``RequestStream``. Unlike an anyio memory stream it takes
    no checkpoint for an event that is already buffered: a request's events usually arrive
    together (an output and the done), and a loop turn per event was a third of the router's
    cost per request (the router benchmark shows it). ``RequestStream`` still yields to the loop every
    ``RequestStream.YIELD_EVERY`` events, so a long buffered stream cannot starve other tasks.
    """

    __slots__ = ("_bytes", "_closed", "_ended", "_full", "_items", "_peak", "_waiter", "limit",
                 "on_pressure", "partials")

    def __init__(self, limit: int | None = None,
                 on_pressure: Callable[[bool], None] | None = None) -> None:
        self._items: deque[Event] = deque()
        # The request's PartialBuffer, where its producer keeps one (the router does).
        self.partials: PartialBuffer | None = None
        self._ended = False  # the producer is done: EndOfStream once the buffer is empty
        self._closed = False  # the consumer is gone: events are dropped
        self._waiter: asyncio.Future[None] | None = None
        self._bytes = self._peak = 0
        self._full = False
        self.limit = limit
        self.on_pressure = on_pressure

    def send_nowait(self, event: Event) -> None:
        if self._closed:
            return  # the consumer left; the router cancels the request on that same call
        if self._ended:
            raise anyio.ClosedResourceError("send_nowait after end()")
        self._items.append(event)
        value = event.value
        self._bytes += EVENT_BYTES + len(value) if type(value) is bytes else EVENT_BYTES
        if self._bytes > self._peak:
            self._peak = self._bytes
        if not self._full and self.limit is not None and self._bytes >= self.limit:
            self._full = True
            if self.on_pressure is not None:
                self.on_pressure(True)
        self._wake()

    def statistics(self) -> ChannelStatistics:
        return ChannelStatistics(len(self._items), self._bytes, self._peak, self._full)

    def end(self) -> None:
        """No more events: the consumer gets those buffered, then ``EndOfStream``."""
        self._ended = True
        self._wake()

    def close(self) -> None:
        """The consumer's close: buffered and later events are dropped."""
        self._closed = True
        self._items.clear()
        self._bytes = 0
        self._full = False  # nobody to wait for: the producer cancels the request
        self._wake()

    def receive_nowait(self) -> Event:
        if self._items:
            event = self._items.popleft()
            value = event.value
            self._bytes -= EVENT_BYTES + len(value) if type(value) is bytes else EVENT_BYTES
            if self._full and self.limit is not None and self._bytes <= self.limit // 2:
                self._full = False
                if self.on_pressure is not None:
                    self.on_pressure(False)
            return event
        if self._closed:
            raise anyio.ClosedResourceError
        if self._ended:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    async def receive(self) -> Event:
        """The next event; a checkpoint, as anyio's ``receive`` is (``receive_nowait`` is not)."""
        if self._items or self._ended or self._closed:
            await asyncio.sleep(0)
        while True:
            try:
                return self.receive_nowait()
            except anyio.WouldBlock:
                pass
            if self._waiter is not None:
                raise anyio.BusyResourceError("receiving")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class RequestStream:
    """The events of one request, as an async iterator; ``await stream.aclose()`` cancels it.

    Reading it to its end closes it too.

    An ingress feeds ``receive`` (an anyio memory stream, or an ``EventChannel``) and learns of
    the close through ``on_close``, called once, synchronously: closing works inside a cancelled
    scope too, which is where a server closes the stream of a client that went away. An event
    that is already buffered is returned without a checkpoint, but at least every
    ``YIELD_EVERY`` events the reader passes through one, so that it can be cancelled and other
    tasks get to run.

    ``decode``, if given, turns each output event into the one the consumer sees; it returns an
    ``error`` event for an output it cannot decode, and the stream then ends (and the request is
    cancelled) after that event. ``partials``, the request's ``PartialBuffer``, is told of each
    partial event read (``altoflow.runtime.partials``: coalescing and the cap).
    """

    YIELD_EVERY = 32

    def __init__(self, receive: EventSource, on_close: Callable[[], None], request_id: int,
                 decode: Callable[[Event], Event] | None = None,
                 partials: PartialBuffer | None = None) -> None:
        self.request_id = request_id
        self._receive = receive
        self._on_close: Callable[[], None] | None = on_close
        self._decode = decode
        self._partials = partials
        # Whether events go to the reader as they come out of the buffer (no decode step and
        # no partials to account for): the per-event path is then one test shorter.
        self._as_is = decode is None and partials is None
        self._unyielded = 0

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> Event:
        try:
            if self._unyielded < self.YIELD_EVERY:
                try:
                    event = self._receive.receive_nowait()
                except anyio.WouldBlock:
                    pass
                else:
                    self._unyielded += 1
                    return event if self._as_is else self._decoded(event)
            self._unyielded = 0
            event = await self._receive.receive()  # a checkpoint
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self.close()  # read to the end: the same as closing it
            raise StopAsyncIteration from None
        return event if self._as_is else self._decoded(event)

    def ready(self) -> Event | None:
        """The next event if one is buffered already, else None; never a checkpoint. At the
        end of the stream it is None too, and the next ``__anext__`` stops the iteration."""
        try:
            event = self._receive.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return None
        return event if self._as_is else self._decoded(event)

    def _decoded(self, event: Event) -> Event:
        if event.type != "output":
            if event.type == "partial" and self._partials is not None:
                return self._partials.read(event)  # its merged deltas, joined
            return event
        if self._decode is None:
            return event
        event = self._decode(event)
        if event.type == "error":
            self.close()  # an output that could not be decoded ends the request here
        return event

    def close(self) -> None:
        """Stop reading and cancel the request if it still runs (idempotent)."""
        self._receive.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
