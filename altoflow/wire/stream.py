"""Streams of frames: `FrameReader` splits received bytes into frames, `FrameWriter` coalesces
frames to send into one buffer per flush. Neither does I/O or waits: the socket shells in
router.py and worker.py feed them and write what they hand back.

A stream that is not valid frames raises `RemoteProtocolError`, and after that the connection
must be closed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from anyio import WouldBlock

from altoflow.wire.frame import (
    _HEADER,
    _KIND_BY_BYTE,
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    MAGIC,
    PROTOCOL_VERSION,
    Frame,
    Header,
    Kind,
    RawFrame,
    RemoteProtocolError,
    _decode_frame,
    _header_problem,
    _tuple_new,
    encode_frame,
    encode_item,
)

__all__ = ["FrameReader", "FrameWriter", "ReaderStatistics", "WriterStatistics"]


class ReaderStatistics(NamedTuple):
    frames: int
    bytes: int
    buffered_bytes: int


class FrameReader:
    """Splits a byte stream into frames; no I/O, no waiting.

    `feed` is the whole `_nowait` core: it never blocks, takes any chunk of the stream (a frame
    may be split anywhere, many frames may come in one chunk) and returns every frame completed
    by it, so the async shell is only `frames = reader.feed(await receive())`. `feed_raw` does the
    same without decoding envelopes, for a forwarder. Call `eof()` when the peer closes, so that a
    truncated last frame is reported instead of dropped.

    Headers are checked as soon as their HEADER_SIZE bytes arrive, so a corrupt length is refused
    before anything is buffered for it, and the buffer never holds more than one incomplete frame.
    """

    __slots__ = ("_bytes", "_error", "_frames", "_max_frame_size", "_pending")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size < HEADER_SIZE:
            raise ValueError(f"max_frame_size must be at least {HEADER_SIZE}, got {max_frame_size}")
        self._max_frame_size = max_frame_size
        self._pending = bytearray()
        self._error: RemoteProtocolError | None = None
        self._frames = 0
        self._bytes = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Every frame that `data` completes, decoded; raises RemoteProtocolError on bad input."""
        return self._feed(data, False)  # type: ignore[return-value]

    def feed_raw(self, data: bytes | bytearray | memoryview) -> list[RawFrame]:
        """Like `feed`, but envelopes stay undecoded: a forwarder's path."""
        return self._feed(data, True)  # type: ignore[return-value]

    def eof(self) -> None:
        """The peer closed the stream: raises RemoteProtocolError if it stopped inside a frame."""
        if self._error is not None:
            raise self._error
        if self._pending:
            have = len(self._pending)
            if have < HEADER_SIZE:
                what = f"{have} of the {HEADER_SIZE} header bytes"
            else:
                what = f"{have} of {_HEADER.unpack_from(self._pending)[0]} bytes"
            self._fail(f"the stream ended in the middle of a frame: got {what}")

    def statistics(self) -> ReaderStatistics:
        return ReaderStatistics(self._frames, self._bytes, len(self._pending))

    def _fail(self, message: str) -> None:
        # The stream has lost its framing, so every later call fails the same way.
        self._error = RemoteProtocolError(message)
        self._pending = bytearray()
        raise self._error

    def _feed(self, data: bytes | bytearray | memoryview, raw: bool) -> list[Frame] | list[RawFrame]:
        if self._error is not None:
            raise self._error
        self._bytes += len(data)
        if self._pending:
            self._pending += data
            buf: bytes | bytearray | memoryview = self._pending
        else:
            buf = data
        n = len(buf)
        pos = 0
        out: list = []
        unpack = _HEADER.unpack_from
        max_size = self._max_frame_size
        mv = memoryview(buf)
        try:
            while n - pos >= HEADER_SIZE:
                t = unpack(buf, pos)
                length = t[0]
                # _header_ok(t, max_size), inlined: this loop is the router's per-frame cost.
                if not (
                    t[1] == MAGIC
                    and t[2] == PROTOCOL_VERSION
                    and HEADER_SIZE <= length <= max_size
                    and _KIND_BY_BYTE[t[3]] is not None
                    and not t[4]
                    and t[6] <= length - HEADER_SIZE
                ):
                    problem = _header_problem(t, max_size)
                    self._fail(f"{problem} (frame at stream offset {self._bytes - n + pos})")
                end = pos + length
                if end > n:
                    break
                if raw:
                    out.append(_tuple_new(RawFrame, (_tuple_new(Header, t), bytes(mv[pos:end]))))
                else:
                    try:
                        out.append(_decode_frame(t, mv, pos))
                    except RemoteProtocolError as exc:
                        self._fail(str(exc))
                pos = end
        finally:
            mv.release()
        self._frames += len(out)
        if pos == n:
            if self._pending:
                self._pending = bytearray()
        elif buf is self._pending:
            del self._pending[:pos]
        else:
            self._pending = bytearray(buf[pos:])
        return out


class WriterStatistics(NamedTuple):
    pending_frames: int
    pending_bytes: int
    frames_flushed: int
    bytes_flushed: int


class FrameWriter:
    """Collects outgoing frames and hands them over as one buffer per flush.

    A receiving socket takes several times more frames per second in 64 KiB writes than in
    writes of one frame each, so the shell calls `flush()` once per event-loop turn and writes
    the result.
    With `max_pending_bytes`, `send_nowait`/`write_nowait` raise anyio's WouldBlock instead of
    growing past it (a frame into an empty writer is always taken, so big frames still pass);
    the async shell waits for the transport to drain and retries.
    """

    __slots__ = ("_bytes", "_chunks", "_frames", "_max", "_pending_bytes", "_pending_frames")

    def __init__(self, max_pending_bytes: int | None = None) -> None:
        self._chunks: list[bytes | bytearray | memoryview] = []
        self._pending_bytes = 0
        self._pending_frames = 0
        self._max = max_pending_bytes
        self._frames = 0
        self._bytes = 0

    def send_nowait(self, kind: Kind | int, **fields: object) -> None:
        """Encode a frame (the arguments of `encode_frame`) and queue it."""
        self.write_nowait(encode_frame(kind, **fields))  # type: ignore[arg-type]

    def write_nowait(self, *chunks: bytes | bytearray | memoryview) -> None:
        """Queue one already-encoded frame, given whole or in pieces (a new header + the old rest).

        The bytes are not checked: they are frames already encoded (or forwarded).
        """
        size = 0
        for chunk in chunks:
            size += len(chunk)
        if self._max is not None and self._pending_frames and self._pending_bytes + size > self._max:
            raise WouldBlock
        self._chunks.extend(chunks)
        self._pending_bytes += size
        self._pending_frames += 1

    def item(self, kind: Kind | int, stage: int, request_id: int, ancestry: tuple[int, ...] = (),
             payload: bytes = b"", **fields: Any) -> None:
        """Queue a per-item frame (the arguments of `encode_item`)."""
        self.write_nowait(encode_item(kind, stage, request_id, ancestry, payload, **fields))

    def inputs(self, stage: int, request_id: int, ancestry: tuple[int, ...],
               parts: list[bytes], trace: bytes = b"") -> None:
        """Queue the DATA frame of one invocation's inputs, one payload part per parameter, with
        the request's trace context while tracing is on."""
        if len(parts) == 1:
            self.write_nowait(encode_item(Kind.DATA, stage, request_id, ancestry, parts[0],
                                          trace=trace))
        else:
            self.write_nowait(encode_item(Kind.DATA, stage, request_id, ancestry, b"".join(parts),
                                          part_sizes=[len(p) for p in parts], trace=trace))

    def flush(self) -> bytes:
        """Everything queued since the last flush, as one buffer (b"" when nothing is)."""
        if not self._chunks:
            return b""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._frames += self._pending_frames
        self._bytes += self._pending_bytes
        self._pending_frames = 0
        self._pending_bytes = 0
        return data

    def statistics(self) -> WriterStatistics:
        return WriterStatistics(self._pending_frames, self._pending_bytes, self._frames, self._bytes)
