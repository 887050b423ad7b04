"""Frames of the altoflow wire protocol, read and written without any I/O.

Every message between the router and a replica is one frame. All integers are little-endian.

    offset  size  field
    0       4     length          u32  bytes in the whole frame, these 4 included
    4       1     magic           u8   0xAF
    5       1     version         u8   PROTOCOL_VERSION (1)
    6       1     kind            u8   a Kind (wire.proto enum Kind)
    7       1     flags           u8   bit 0 HAS_KEY: key_hash is set; other bits must be 0
    8       4     stage           u32  the stage the frame goes to or comes from (plan index)
    12      4     envelope size   u32  E
    16      8     request id      u64
    24      8     key hash        u64  routing_key_hash(request, key prefix); 0 without HAS_KEY
    32      E     envelope        wire.proto Envelope: ancestry, seq, part sizes, produced,
                                  status, trace stamps, body; E = 0 when all are empty
    32+E    rest  payload         opaque bytes, (de)serialised by codec.py in the workers only

The first 32 bytes are a fixed struct so that a frame can be routed (kind, stage, request, key)
from it alone; `feed_raw` and `pack_header` split and re-head frames without parsing protobuf
(87 ns for the struct against 180-880 ns for the envelope, measured on this machine class).
The router itself decodes every frame it reads, and benchmarks/router.py uses the raw path for
its bare-forwarder baseline.

`encode_item` writes the per-item frames (DATA, ACK, OPEN, FLUSH, FLUSH_DONE, CANCEL) that the
router and the workers send, the same bytes as `encode_frame`, without protobuf.
`FrameReader.feed` takes bytes split anywhere and returns every complete frame in them;
`FrameWriter` coalesces frames into one buffer per flush. A stream that is not valid frames
raises `RemoteProtocolError`, and after that the connection must be closed.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from anyio import WouldBlock
from google.protobuf.message import DecodeError as _ProtobufDecodeError

from altoflow.runtime import wire_pb2

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HAS_KEY",
    "HEADER_SIZE",
    "MAGIC",
    "NONCE_SIZE",
    "PROTOCOL_VERSION",
    "AuthenticationError",
    "Body",
    "Challenge",
    "ErrorInfo",
    "Frame",
    "FrameReader",
    "FrameWriter",
    "Header",
    "Hello",
    "Kind",
    "LocalProtocolError",
    "ProtocolError",
    "RawFrame",
    "ReaderStatistics",
    "Ready",
    "RemoteProtocolError",
    "STATUS_CODES",
    "STATUS_NAMES",
    "TracePoint",
    "TraceStamp",
    "WriterStatistics",
    "encode_frame",
    "encode_item",
    "pack_header",
    "peek_header",
    "replica_proof",
    "router_proof",
    "routing_key_hash",
    "verify_proof",
]

MAGIC = 0xAF
PROTOCOL_VERSION = 1
HEADER_SIZE = 32
HAS_KEY = 0x01
_KNOWN_FLAGS = HAS_KEY
# Large enough for an image or a batch of embeddings in one payload, small enough that a
# corrupt length cannot make a reader buffer gigabytes before it notices.
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
NONCE_SIZE = 16

_HEADER = struct.Struct("<IBBBBIIQQ")
# Builds a NamedTuple from a tuple without its generated __new__, on the per-frame paths.
_tuple_new = tuple.__new__
assert _HEADER.size == HEADER_SIZE
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
# wire.proto enum Status, by value, as the core names the outcomes; and back.
STATUS_NAMES = ("ok", "dropped", "failed")
STATUS_CODES = {name: code for code, name in enumerate(STATUS_NAMES)}
_STATUS_MAX = len(STATUS_NAMES) - 1


class Kind(IntEnum):
    """Frame kinds; the values are those of `enum Kind` in wire.proto."""

    HELLO = 1
    CHALLENGE = 2
    READY = 3
    DATA = 4
    ACK = 5
    FLUSH = 6
    ERROR = 7
    CANCEL = 8
    SHUTDOWN = 9
    HEARTBEAT = 10
    OPEN = 11
    FLUSH_DONE = 12


class TracePoint(IntEnum):
    """Where a trace stamp was taken; the values are those of `enum TracePoint` in wire.proto."""

    SENT = 1
    ROUTED = 2
    RECEIVED = 3
    STARTED = 4
    FINISHED = 5


# Indexed by the kind byte: a tuple lookup is several times faster than Kind(byte).
_KIND_BY_BYTE: tuple[Kind | None, ...] = tuple(
    Kind(i) if i in Kind._value2member_map_ else None for i in range(256)
)
_KIND_VALUES = frozenset(Kind)


class ProtocolError(Exception):
    """A frame broke the wire protocol."""


class RemoteProtocolError(ProtocolError):
    """The bytes received are not valid frames: the peer's mistake or a corrupt stream.

    The stream has lost its framing, so the only recovery is to close the connection.
    """


class LocalProtocolError(ProtocolError, ValueError):
    """This process asked to encode a frame that the protocol cannot carry."""


class AuthenticationError(RemoteProtocolError):
    """The peer's handshake proof does not match the shared secret."""


@dataclass(frozen=True, slots=True)
class TraceStamp:
    stage: int
    point: TracePoint
    ns: int


@dataclass(frozen=True, slots=True)
class Hello:
    stage: str
    replica_id: int
    protocol_version: int = PROTOCOL_VERSION
    pid: int = 0
    nonce: bytes = b""
    proof: bytes = b""


@dataclass(frozen=True, slots=True)
class Challenge:
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    stage_index: int
    proof: bytes = b""


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    message: str
    exc_type: str = ""
    traceback: str = ""


Body = Hello | Challenge | Ready | ErrorInfo | str | None

# Which body each kind carries. A kind missing here carries none.
_REQUIRED_BODY: dict[int, type] = {
    Kind.HELLO: Hello,
    Kind.CHALLENGE: Challenge,
    Kind.READY: Ready,
    Kind.ERROR: ErrorInfo,
}
_OPTIONAL_BODY: dict[int, type] = {
    Kind.CANCEL: str,
    Kind.SHUTDOWN: str,
    Kind.ACK: ErrorInfo,  # with status FAILED
    Kind.FLUSH_DONE: ErrorInfo,
}


def _body_problem(kind: int, body: object) -> str | None:
    required = _REQUIRED_BODY.get(kind)
    if required is not None:
        if type(body) is required:
            return None
        return f"{Kind(kind).name} frames need a body of type {required.__name__}, got {type(body).__name__}"
    optional = _OPTIONAL_BODY.get(kind)
    if body is None or type(body) is optional:
        return None
    if optional is None:
        return f"{Kind(kind).name} frames take no body, got {type(body).__name__}"
    return f"{Kind(kind).name} frames take a body of type {optional.__name__} or None, got {type(body).__name__}"


class Frame(NamedTuple):
    """One decoded frame. `encode()` gives back the bytes it was decoded from.

    Immutable like the events elsewhere, but a NamedTuple rather than a frozen dataclass: a
    reader builds one per frame, and a frozen dataclass of these fields took 1.5 us to build
    here (each field goes through object.__setattr__), more than decoding the frame itself.
    """

    kind: Kind
    stage: int = 0
    request_id: int = 0
    ancestry: tuple[int, ...] = ()
    seq: int = 0
    key_hash: int | None = None
    produced: int = 0
    payload: bytes = b""
    part_sizes: tuple[int, ...] = ()
    trace: tuple[TraceStamp, ...] = ()
    body: Body = None
    status: int = 0  # ACK / FLUSH_DONE outcome, FLUSH "opened" (wire.proto enum Status)

    def parts(self) -> tuple[bytes, ...]:
        """The payload split into its parts (one per joined input); one part if unsplit."""
        if not self.part_sizes:
            return (self.payload,)
        out = []
        pos = 0
        for size in self.part_sizes:
            out.append(self.payload[pos : pos + size])
            pos += size
        return tuple(out)

    def encode(self) -> bytes:
        return encode_frame(
            self.kind,
            stage=self.stage,
            request_id=self.request_id,
            ancestry=self.ancestry,
            seq=self.seq,
            key_hash=self.key_hash,
            produced=self.produced,
            payload=self.payload,
            part_sizes=self.part_sizes,
            trace=self.trace,
            body=self.body,
            status=self.status,
        )


class Header(NamedTuple):
    """The fixed 32-byte prefix of a frame, in wire order (see the module docstring).

    A NamedTuple rather than a dataclass: the router builds one per frame, and a tuple is
    built from `struct.unpack_from` without a Python-level __init__.
    """

    length: int
    magic: int
    version: int
    kind: int
    flags: int
    stage: int
    envelope_size: int
    request_id: int
    key_hash: int

    @property
    def key(self) -> int | None:
        """The routing-key hash, or None for a load-balanced frame."""
        return self.key_hash if self.flags & HAS_KEY else None

    @property
    def payload_size(self) -> int:
        return self.length - HEADER_SIZE - self.envelope_size


class RawFrame(NamedTuple):
    """A frame split off the stream but not decoded, for forwarding it as it is."""

    header: Header
    data: bytes  # the whole frame, header included

    def decode(self) -> Frame:
        return _decode_frame(self.header, memoryview(self.data), 0)


def _header_ok(t: tuple[int, ...], max_frame_size: int) -> bool:
    # Every check of _header_problem in one expression: this runs once per frame.
    length = t[0]
    return (
        t[1] == MAGIC
        and t[2] == PROTOCOL_VERSION
        and HEADER_SIZE <= length <= max_frame_size
        and _KIND_BY_BYTE[t[3]] is not None
        and not t[4] & ~_KNOWN_FLAGS
        and (not t[8] or t[4] & HAS_KEY)
        and t[6] <= length - HEADER_SIZE
    )


def _header_problem(t: tuple[int, ...], max_frame_size: int) -> str | None:
    length, magic, version, kind, flags, _stage, envelope_size, _request, key_hash = t
    if magic != MAGIC:
        return (
            f"bad magic byte 0x{magic:02x} (expected 0x{MAGIC:02x}): the peer does not speak "
            "the altoflow wire protocol, or the stream lost its framing"
        )
    if version != PROTOCOL_VERSION:
        return (
            f"peer speaks wire protocol version {version}, this process speaks "
            f"{PROTOCOL_VERSION}: run the same altoflow version on both ends"
        )
    if length < HEADER_SIZE:
        return f"frame length {length} is shorter than the {HEADER_SIZE}-byte header"
    if length > max_frame_size:
        return (
            f"frame of {length} bytes exceeds the limit of {max_frame_size} bytes "
            "(raise FrameReader(max_frame_size=...) if such payloads are expected)"
        )
    if _KIND_BY_BYTE[kind] is None:
        return f"unknown frame kind {kind}"
    if flags & ~_KNOWN_FLAGS:
        return f"unknown flag bits 0x{flags & ~_KNOWN_FLAGS:02x}"
    if not flags & HAS_KEY and key_hash:
        return "a key hash is set but the HAS_KEY flag is not"
    if envelope_size > length - HEADER_SIZE:
        return f"envelope of {envelope_size} bytes does not fit in a frame of {length} bytes"
    return None


def peek_header(
    buf: bytes | bytearray | memoryview, offset: int = 0, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> Header | None:
    """The header of the frame that starts at `offset`, or None if fewer than 32 bytes are there.

    Validates the header (magic, version, kind, flags, sizes), not the envelope; raises
    RemoteProtocolError for a bad one.
    """
    if len(buf) - offset < HEADER_SIZE:
        return None
    t = _HEADER.unpack_from(buf, offset)
    if not _header_ok(t, max_frame_size):
        raise RemoteProtocolError(f"{_header_problem(t, max_frame_size)} (frame at stream offset {offset})")
    return _tuple_new(Header, t)


def pack_header(
    kind: int,
    *,
    stage: int,
    request_id: int,
    envelope_size: int,
    payload_size: int,
    key_hash: int | None = None,
) -> bytes:
    """A 32-byte header, for forwarding an envelope and payload under a new header."""
    length = HEADER_SIZE + envelope_size + payload_size
    flags = 0 if key_hash is None else HAS_KEY
    try:
        return _HEADER.pack(
            length, MAGIC, PROTOCOL_VERSION, kind, flags, stage, envelope_size, request_id, key_hash or 0
        )
    except struct.error:
        raise LocalProtocolError(
            _range_problem(
                kind=(kind, 255),
                stage=(stage, _U32),
                request_id=(request_id, _U64),
                key_hash=(key_hash or 0, _U64),
                length=(length, _U32),
            )
        ) from None


def _range_problem(**fields: tuple[int, int]) -> str:
    for name, (value, top) in fields.items():
        if not 0 <= value <= top:
            return f"{name}={value} is outside the range 0..{top} that the frame header holds"
    return "a header field is out of range"  # unreachable while callers list every field


def encode_frame(
    kind: Kind | int,
    *,
    stage: int = 0,
    request_id: int = 0,
    ancestry: Sequence[int] = (),
    seq: int = 0,
    key_hash: int | None = None,
    produced: int = 0,
    payload: bytes | bytearray | memoryview = b"",
    part_sizes: Sequence[int] = (),
    trace: Sequence[TraceStamp] = (),
    body: Body = None,
    status: int = 0,
) -> bytes:
    """One frame as bytes. The keyword arguments are the fields of `Frame`.

    `part_sizes` splits `payload` into one part per joined input and must sum to its length.
    Raises LocalProtocolError when a value does not fit the protocol.
    """
    if not isinstance(kind, int) or kind not in _KIND_VALUES:
        raise LocalProtocolError(f"unknown frame kind {kind!r}")
    problem = _body_problem(kind, body)
    if problem is not None:
        raise LocalProtocolError(problem)
    if part_sizes and sum(part_sizes) != len(payload):
        raise LocalProtocolError(
            f"part_sizes {list(part_sizes)} add up to {sum(part_sizes)} bytes, "
            f"but the payload has {len(payload)}"
        )
    if not isinstance(status, int) or not 0 <= status <= _STATUS_MAX:
        raise LocalProtocolError(f"status {status!r} is not one of 0 (ok), 1 (dropped), 2 (failed)")
    if ancestry or seq or part_sizes or produced or trace or body is not None or status:
        try:
            envelope = _encode_envelope(ancestry, seq, part_sizes, produced, trace, body, status)
        except (ValueError, TypeError) as exc:
            raise LocalProtocolError(
                _envelope_problem(ancestry, seq, part_sizes, produced, trace)
                or f"cannot encode the frame envelope: {exc}"
            ) from None
    else:
        envelope = b""
    header = pack_header(
        kind,
        stage=stage,
        request_id=request_id,
        envelope_size=len(envelope),
        payload_size=len(payload),
        key_hash=key_hash,
    )
    return b"".join((header, envelope, payload))


# The kinds `encode_item` takes: per-item frames whose body, if any, is optional.
_ITEM_KINDS = frozenset((Kind.DATA, Kind.ACK, Kind.OPEN, Kind.FLUSH, Kind.FLUSH_DONE, Kind.CANCEL))


def encode_item(
    kind: Kind | int,
    stage: int,
    request_id: int,
    ancestry: tuple[int, ...] = (),
    payload: bytes = b"",
    status: int = 0,
    part_sizes: tuple[int, ...] | list[int] = (),
) -> bytes:
    """`encode_frame(kind, stage=, request_id=, ancestry=, payload=, status=, part_sizes=)`, the
    same bytes.

    The per-item path of the router and the workers: when the envelope holds at most the
    ancestry, part sizes and a status (each packed list under 128 bytes), it is written here as
    protobuf writes it (packed fields 1 and 3, then field 6) instead of through a protobuf
    message and `encode_frame`'s checks (benchmarks/frames.py times both). Anything else goes
    through `encode_frame`.
    """
    if kind in _ITEM_KINDS and type(status) is int and 0 <= status <= _STATUS_MAX:
        envelope: bytes | None = b""
        if ancestry:
            if min(ancestry) >= 0 and max(ancestry) < 128:
                packed: bytes | None = bytes(ancestry)  # one byte per index: the common case
            else:
                packed = _packed_u32(ancestry)
            if packed is None or len(packed) >= 128:
                envelope = None
            else:
                envelope = b"\x0a" + _BYTE[len(packed)] + packed
        if part_sizes and envelope is not None:
            packed = _packed_u32(part_sizes)
            if packed is None or len(packed) >= 128 or sum(part_sizes) != len(payload):
                envelope = None
            else:
                envelope += b"\x1a" + _BYTE[len(packed)] + packed
        if envelope is not None:
            if status:
                envelope += b"\x30" + _BYTE[status]
            try:
                header = _HEADER.pack(HEADER_SIZE + len(envelope) + len(payload), MAGIC, PROTOCOL_VERSION,
                                      kind, 0, stage, len(envelope), request_id, 0)
            except struct.error:
                pass  # out of range: encode_frame says which field
            else:
                return header + envelope + payload if envelope else header + payload
    return encode_frame(kind, stage=stage, request_id=request_id, ancestry=ancestry, payload=payload,
                        status=status, part_sizes=part_sizes)


def _packed_u32(values: Sequence[int]) -> bytes | None:
    """Values as protobuf packs a repeated uint32 (varints back to back); None if one is not a u32."""
    out = bytearray()
    for v in values:
        if not 0 <= v <= _U32:
            return None
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


_BYTE = tuple(bytes((i,)) for i in range(256))


def _envelope_problem(
    ancestry: Sequence[int], seq: int, part_sizes: Sequence[int], produced: int, trace: Sequence[TraceStamp]
) -> str | None:
    # Only called once protobuf refused a value, to say which field it was.
    checks = [("ancestry index", i, _U32) for i in ancestry]
    checks += [("part size", i, _U32) for i in part_sizes]
    checks += [("seq", seq, _U64), ("produced", produced, _U32)]
    checks += [("trace stage", s.stage, _U32) for s in trace] + [("trace ns", s.ns, _U64) for s in trace]
    for name, value, top in checks:
        if not isinstance(value, int) or not 0 <= value <= top:
            return f"{name} {value!r} is not an integer in the range 0..{top} that the envelope holds"
    return None


def _encode_envelope(
    ancestry: Sequence[int],
    seq: int,
    part_sizes: Sequence[int],
    produced: int,
    trace: Sequence[TraceStamp],
    body: Body,
    status: int = 0,
) -> bytes:
    env = wire_pb2.Envelope()
    if status:
        env.status = status
    if ancestry:
        env.ancestry.extend(ancestry)
    if seq:
        env.seq = seq
    if part_sizes:
        env.part_sizes.extend(part_sizes)
    if produced:
        env.produced = produced
    for stamp in trace:
        env.trace.add(stage=stamp.stage, point=stamp.point, ns=stamp.ns)
    if body is None:
        pass
    elif type(body) is str:
        env.reason = body
    elif type(body) is ErrorInfo:
        env.error.SetInParent()
        env.error.message = body.message
        env.error.exc_type = body.exc_type
        env.error.traceback = body.traceback
    elif type(body) is Hello:
        env.hello.SetInParent()
        env.hello.stage = body.stage
        env.hello.replica_id = body.replica_id
        env.hello.protocol_version = body.protocol_version
        env.hello.pid = body.pid
        env.hello.nonce = body.nonce
        env.hello.proof = body.proof
    elif type(body) is Challenge:
        env.challenge.SetInParent()
        env.challenge.nonce = body.nonce
    elif type(body) is Ready:
        env.ready.SetInParent()
        env.ready.stage_index = body.stage_index
        env.ready.proof = body.proof
    return env.SerializeToString()


def _decode_body(env: wire_pb2.Envelope) -> Body:
    which = env.WhichOneof("body")
    if which is None:
        return None
    if which == "reason":
        return env.reason
    if which == "error":
        e = env.error
        return ErrorInfo(e.message, e.exc_type, e.traceback)
    if which == "hello":
        h = env.hello
        return Hello(h.stage, h.replica_id, h.protocol_version, h.pid, h.nonce, h.proof)
    if which == "challenge":
        return Challenge(env.challenge.nonce)
    r = env.ready
    return Ready(r.stage_index, r.proof)


def _decode_frame(t: tuple[int, ...], mv: memoryview, pos: int) -> Frame:
    length, _magic, _version, kind, flags, stage, envelope_size, request_id, key_hash = t
    start = pos + HEADER_SIZE
    stop = start + envelope_size
    payload = bytes(mv[stop : pos + length])
    plain = _decode_plain_envelope(mv, start, stop) if envelope_size else _EMPTY_ENVELOPE
    if plain is not None:
        ancestry, seq, part_sizes, produced, status = plain
        trace: tuple[TraceStamp, ...] = ()
        body: Body = None
        if kind in _REQUIRED_BODY:
            raise RemoteProtocolError(_body_problem(kind, None))
    else:
        try:
            env = wire_pb2.Envelope.FromString(mv[start:stop])
        except _ProtobufDecodeError as exc:
            raise RemoteProtocolError(f"the frame envelope is not a valid protobuf Envelope: {exc}") from None
        body = _decode_body(env)
        problem = _body_problem(kind, body)
        if problem is not None:
            raise RemoteProtocolError(problem)
        if env.trace:
            try:
                trace = tuple(TraceStamp(s.stage, TracePoint(s.point), s.ns) for s in env.trace)
            except ValueError as exc:
                raise RemoteProtocolError(f"bad trace stamp: {exc}") from None
        else:
            trace = ()
        ancestry, seq, part_sizes, produced, status = (
            tuple(env.ancestry), env.seq, tuple(env.part_sizes), env.produced, env.status
        )
    if part_sizes and sum(part_sizes) != len(payload):
        raise RemoteProtocolError(
            f"part sizes add up to {sum(part_sizes)} bytes, but the payload has {len(payload)}"
        )
    if not 0 <= status <= _STATUS_MAX:
        raise RemoteProtocolError(f"unknown status {status}")
    return _tuple_new(
        Frame,
        (
            _KIND_BY_BYTE[kind],
            stage,
            request_id,
            ancestry,
            seq,
            key_hash if flags & HAS_KEY else None,
            produced,
            payload,
            part_sizes,
            trace,
            body,
            status,
        ),
    )


# The envelope of most frames holds only ancestry, seq, part sizes, produced and status. Reading
# those through protobuf's Python objects cost about 2.5x more than this loop (FromString, then a
# Python object per repeated field), so such envelopes are read here when they are in the form
# protobuf writes them: each field at most once, repeated fields packed, values in range.
# Anything else (trace, body, unknown fields, other valid encodings, garbage) returns None and
# goes to protobuf, so the result is always what protobuf would have read; a test checks it.
_EMPTY_ENVELOPE = ((), 0, (), 0, 0)
_TAG_ANCESTRY, _TAG_SEQ, _TAG_PART_SIZES, _TAG_PRODUCED, _TAG_STATUS = 0x0A, 0x10, 0x1A, 0x20, 0x30


def _read_varint(buf: bytes | memoryview, pos: int, stop: int) -> tuple[int, int] | None:
    value = 0
    shift = 0
    while pos < stop and shift < 64:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    return None


def _decode_plain_envelope(
    buf: memoryview, pos: int, stop: int
) -> tuple[tuple[int, ...], int, tuple[int, ...], int, int] | None:
    ancestry: tuple[int, ...] = ()
    part_sizes: tuple[int, ...] = ()
    seq = produced = status = 0
    seen = 0
    while pos < stop:
        tag = buf[pos]
        field = 1 << (tag >> 3)
        if tag & 0x80 or field & seen or pos + 1 >= stop:
            return None
        seen |= field
        value = buf[pos + 1]
        pos += 2
        if value & 0x80:
            read = _read_varint(buf, pos - 1, stop)
            if read is None:
                return None
            value, pos = read
        if tag == _TAG_ANCESTRY or tag == _TAG_PART_SIZES:
            end = pos + value
            if end > stop:
                return None
            packed = bytes(buf[pos:end])
            if packed.isascii():  # every value below 128, one byte each: the common case
                values = tuple(packed)
            else:
                out = []
                at = 0
                while at < value:
                    read = _read_varint(packed, at, value)
                    if read is None or read[0] > _U32:
                        return None
                    out.append(read[0])
                    at = read[1]
                values = tuple(out)
            pos = end
            if tag == _TAG_ANCESTRY:
                ancestry = values
            else:
                part_sizes = values
        elif tag == _TAG_SEQ and value <= _U64:
            seq = value
        elif tag == _TAG_PRODUCED and value <= _U32:
            produced = value
        elif tag == _TAG_STATUS and value <= _STATUS_MAX:
            status = value
        else:
            return None
    return ancestry, seq, part_sizes, produced, status


class ReaderStatistics(NamedTuple):
    frames: int
    bytes: int
    buffered_bytes: int


class FrameReader:
    """Splits a byte stream into frames; no I/O, no waiting.

    `feed` is the whole `_nowait` core: it never blocks, takes any chunk of the stream (a frame
    may be split anywhere, many frames may come in one chunk) and returns every frame completed
    by it, so the async shell is only `frames = reader.feed(await receive())`. `feed_raw` does the
    same without decoding envelopes, for the router. Call `eof()` when the peer closes, so that a
    truncated last frame is reported instead of dropped.

    Headers are checked as soon as their 32 bytes arrive, so a corrupt length is refused before
    anything is buffered for it, and the buffer never holds more than one incomplete frame.
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
                    and not t[4] & ~_KNOWN_FLAGS
                    and (not t[8] or t[4] & HAS_KEY)
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

    perf-notes.md: a receiver takes 0.8M frames/s written one by one and 4.4-7.6M/s in 64 KiB
    writes, so the shell calls `flush()` once per event-loop turn and writes the result.
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


def routing_key_hash(request_id: int, prefix: Sequence[int]) -> int:
    """The 64-bit hash of a routing key: the request and the ancestry indices up to the folded level.

    A keyed digest rather than Python's hash(), so that every process and machine agrees.
    """
    data = struct.pack(f"<Q{len(prefix)}I", request_id, *prefix)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


# Handshake over TCP (over a UNIX socket the directory permissions are the authentication):
#   router -> replica  CHALLENGE(nonce_c)
#   replica -> router  HELLO(..., nonce_r, proof=replica_proof(secret, nonce_c, hello))
#   router -> replica  READY(..., proof=router_proof(secret, nonce_c, hello))
# Each side proves that it knows the secret over a nonce the other chose, so neither a replayed
# HELLO nor a fake router gets through; the HELLO fields are covered so they cannot be swapped.


def _mac(secret: bytes, label: bytes, *fields: bytes) -> bytes:
    if not secret:
        raise LocalProtocolError("the shared secret is empty; set one for TCP replicas")
    mac = hmac.new(secret, label, hashlib.sha256)
    for field in fields:
        # Length-prefixed, so that no two field lists give the same byte string.
        mac.update(len(field).to_bytes(4, "little"))
        mac.update(field)
    return mac.digest()


def _hello_fields(hello: Hello) -> tuple[bytes, ...]:
    return (
        hello.stage.encode(),
        hello.replica_id.to_bytes(4, "little"),
        hello.protocol_version.to_bytes(4, "little"),
        hello.pid.to_bytes(4, "little"),
        hello.nonce,
    )


def _check_nonce(nonce: bytes, whose: str) -> None:
    if len(nonce) != NONCE_SIZE:
        raise AuthenticationError(f"the {whose} nonce has {len(nonce)} bytes, expected {NONCE_SIZE}")


def replica_proof(secret: bytes, challenge_nonce: bytes, hello: Hello) -> bytes:
    """The replica's proof for its HELLO (the `proof` field itself is not covered)."""
    _check_nonce(challenge_nonce, "router's challenge")
    _check_nonce(hello.nonce, "replica's hello")
    return _mac(secret, b"altoflow/1 replica", challenge_nonce, *_hello_fields(hello))


def router_proof(secret: bytes, challenge_nonce: bytes, hello: Hello) -> bytes:
    """The router's proof for its READY, over its own challenge and the replica's nonce."""
    _check_nonce(challenge_nonce, "router's challenge")
    _check_nonce(hello.nonce, "replica's hello")
    return _mac(secret, b"altoflow/1 router", challenge_nonce, hello.nonce)


def verify_proof(expected: bytes, received: bytes, *, peer: str) -> None:
    """Raise AuthenticationError unless `received` equals `expected`, in constant time."""
    if not hmac.compare_digest(expected, received):
        raise AuthenticationError(
            f"{peer} failed the handshake: its proof does not match the shared secret "
            "(both ends must be started with the same secret)"
        )
