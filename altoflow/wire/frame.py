"""The frame format of the altoflow wire protocol: layout, encoding and decoding, no I/O.

Every message between the router and a replica is one frame. All integers are little-endian.

    offset  size  field
    0       4     length          u32  bytes in the whole frame, these 4 included
    4       1     magic           u8   0xAF
    5       1     version         u8   PROTOCOL_VERSION (3)
    6       1     kind            u8   a Kind (wire.proto enum Kind)
    7       1     flags           u8   reserved: must be 0
    8       4     stage           u32  the stage the frame goes to or comes from (plan index)
    12      4     envelope size   u32  E
    16      8     request id      u64
    24      E     envelope        wire.proto Envelope: ancestry, part sizes, status or opened,
                                  the body of a control frame, a DATA frame's trace context
                                  (only while tracing is on); E = 0 when all are empty
    24+E    rest  payload         opaque bytes, (de)serialised by codec.py in the workers only

The fixed header says how long the frame is, what kind it is and which stage and request it
belongs to, so that a frame can be split off a stream and re-headed (`RawFrame`, `pack_header`)
without parsing protobuf. The router decodes every frame it reads: it routes on the ancestry in
the envelope, which its core hashes for the stages that keep state (see core.py); only the
bare-forwarder baseline of benchmarks/router.py forwards raw frames.

`encode_item` writes the per-item frames (DATA, ACK, OPEN, FLUSH, FLUSH_DONE, CANCEL, CREDIT, PARTIAL) that the
router and the workers send, the same bytes as `encode_frame`, without protobuf; decoding reads
such envelopes without protobuf too (`_decode_plain_envelope`). Both are on the path of every
item, which is why they are written out by hand.

A DATA frame from the router carries `trace`, the W3C trace context of its request's span
(`TRACE_CONTEXT_SIZE` bytes: trace id, span id, trace flags), only while tracing is on
(`altoflow._tracing`); with tracing off the field is empty and no byte of it is sent.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from google.protobuf.message import DecodeError as _ProtobufDecodeError

from altoflow.wire import wire_pb2
from altoflow.wire.varint import pack_uvarints, read_uvarint

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "FANOUT_CREDIT",
    "FANOUT_WINDOW",
    "HEADER_SIZE",
    "MAGIC",
    "PROTOCOL_VERSION",
    "STATUS_CODES",
    "STATUS_NAMES",
    "TRACE_CONTEXT_SIZE",
    "Body",
    "Challenge",
    "ErrorBody",
    "Frame",
    "Header",
    "Hello",
    "Kind",
    "LocalProtocolError",
    "ProtocolError",
    "RawFrame",
    "Ready",
    "RemoteProtocolError",
    "encode_frame",
    "encode_item",
    "pack_header",
    "peek_header",
]

MAGIC = 0xAF
# 2: the routing-key hash and its flag left the header; seq, produced and trace stamps left the
# envelope; FLUSH says `opened` in its own field instead of in `status`. 3: CREDIT, and replicas
# pace their fan-out invocations by it.
PROTOCOL_VERSION = 3
HEADER_SIZE = 24
# Large enough for an image or a batch of embeddings in one payload, small enough that a
# corrupt length cannot make a reader buffer gigabytes before it notices.
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024

# Flow control of fan-out (generator) invocations: an invocation may send FANOUT_WINDOW outputs
# before its first CREDIT, and each CREDIT (whose ancestry is the invocation's) lets it send
# FANOUT_CREDIT more. The replica stops pulling the generator while it has none left, and the
# router grants credit as the outputs' downstream work leaves its queues (core.py, "Flow control").
FANOUT_WINDOW = 64
FANOUT_CREDIT = 32

_HEADER = struct.Struct("<IBBBBIIQ")
assert _HEADER.size == HEADER_SIZE
# Builds a NamedTuple from a tuple without its generated __new__, on the per-frame paths.
_tuple_new = tuple.__new__
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
# wire.proto enum Status, by value, as the core names the outcomes; and back.
STATUS_NAMES = ("ok", "dropped", "failed")
STATUS_CODES = {name: code for code, name in enumerate(STATUS_NAMES)}
_STATUS_MAX = len(STATUS_NAMES) - 1
# A DATA frame's trace context: trace id (16 bytes), span id (8), trace flags (1).
TRACE_CONTEXT_SIZE = 25


class Kind(IntEnum):
    """Frame kinds; the values are those of `enum Kind` in wire.proto.

    HEARTBEAT is a replica's "still alive", sent every heartbeat interval; the router takes it
    as a sign of life and nothing more (and a replica ignores one from the router). CREDIT is
    the router's "the fan-out invocation at this ancestry may send FANOUT_CREDIT more outputs".

    PARTIAL is a replica's ``altoflow.partial(delta)``: the payload is the delta as UTF-8, the
    header and envelope name the request, stage and the ancestry of the input being worked on.
    The router passes it to the request's events only: no stage gets it, and the core (credits,
    progress) never sees it. It always travels before the output and the ACK of its invocation.
    """

    HELLO = 1
    CHALLENGE = 2
    READY = 3
    DATA = 4
    ACK = 5
    FLUSH = 6
    CANCEL = 8
    SHUTDOWN = 9
    HEARTBEAT = 10
    OPEN = 11
    FLUSH_DONE = 12
    CREDIT = 13
    PARTIAL = 14


# Indexed by the kind byte: a tuple lookup is several times faster than Kind(byte).
_KIND_BY_BYTE: tuple[Kind | None, ...] = tuple(
    Kind(i) if i in Kind._value2member_map_ else None for i in range(256)
)
_KIND_VALUES = frozenset(Kind)
# The kinds whose envelope may carry a status, and the one that may say `opened`.
_STATUS_KINDS = frozenset((Kind.ACK, Kind.FLUSH_DONE))


class ProtocolError(Exception):
    """A frame broke the wire protocol."""


class RemoteProtocolError(ProtocolError):
    """The bytes received are not valid frames: the peer's mistake or a corrupt stream.

    The stream has lost its framing, so the only recovery is to close the connection.
    """


class LocalProtocolError(ProtocolError, ValueError):
    """This process asked to encode a frame that the protocol cannot carry."""


# ---------------------------------------------------------------- bodies of the control frames


@dataclass(frozen=True, slots=True)
class Hello:
    """A replica introduces itself: it runs `stage` in replica slot `slot`."""

    stage: str
    slot: int
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
class ErrorBody:
    """Why an invocation or a flush failed, as a replica reports it (the core's ErrorInfo adds
    the stage and the ancestry, which the frame itself carries)."""

    message: str
    exc_type: str = ""
    traceback: str = ""


Body = Hello | Challenge | Ready | ErrorBody | str | None

# Which body each kind carries. A kind missing here carries none.
_REQUIRED_BODY: dict[int, type] = {
    Kind.HELLO: Hello,
    Kind.CHALLENGE: Challenge,
    Kind.READY: Ready,
}
_OPTIONAL_BODY: dict[int, type] = {
    Kind.CANCEL: str,
    Kind.SHUTDOWN: str,
    Kind.ACK: ErrorBody,  # with status FAILED
    Kind.FLUSH_DONE: ErrorBody,
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


def _trace_problem(kind: int, trace: bytes) -> str | None:
    # Called only when a frame has a trace context.
    if kind != Kind.DATA:
        return f"only DATA frames carry a trace context, not {Kind(kind).name}"
    if len(trace) != TRACE_CONTEXT_SIZE:
        return (f"a trace context has {TRACE_CONTEXT_SIZE} bytes (trace id, span id, flags), "
                f"not {len(trace)}")
    return None


def _flag_problem(kind: int, status: int, opened: bool) -> str | None:
    # Which kinds may set `status` and `opened`; called only when one of them is set.
    if status and kind not in _STATUS_KINDS:
        return f"{Kind(kind).name} frames carry no status (only ACK and FLUSH_DONE do), got {status}"
    if opened and kind != Kind.FLUSH:
        return f"only FLUSH frames say whether their group was opened, not {Kind(kind).name}"
    return None


# ---------------------------------------------------------------- frames and headers


class Frame(NamedTuple):
    """One decoded frame. `encode()` gives back the bytes it was decoded from.

    `status` is the outcome that ACK and FLUSH_DONE report (an index into STATUS_NAMES);
    `opened` is FLUSH's instruction: True, the group was opened and emits its result; False,
    its state is discarded. Every other kind has status 0 and opened False. `trace` is a DATA
    frame's trace context while tracing is on (`TRACE_CONTEXT_SIZE` bytes), else empty.

    Immutable like the events elsewhere, but a NamedTuple rather than a frozen dataclass: a
    reader builds one per frame, and a frozen dataclass of these fields took 1.5 us to build
    here (each field goes through object.__setattr__), more than decoding the frame itself.
    """

    kind: Kind
    stage: int = 0
    request_id: int = 0
    ancestry: tuple[int, ...] = ()
    payload: bytes = b""
    part_sizes: tuple[int, ...] = ()
    body: Body = None
    status: int = 0
    opened: bool = False
    trace: bytes = b""

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
            payload=self.payload,
            part_sizes=self.part_sizes,
            body=self.body,
            status=self.status,
            opened=self.opened,
            trace=self.trace,
        )


class Header(NamedTuple):
    """The fixed 24-byte prefix of a frame, in wire order (see the module docstring).

    A NamedTuple rather than a dataclass: it is built from `struct.unpack_from` without a
    Python-level __init__, once per frame.
    """

    length: int
    magic: int
    version: int
    kind: int
    flags: int
    stage: int
    envelope_size: int
    request_id: int

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
    # Every check of _header_problem in one expression; FrameReader inlines it.
    length = t[0]
    return (
        t[1] == MAGIC
        and t[2] == PROTOCOL_VERSION
        and HEADER_SIZE <= length <= max_frame_size
        and _KIND_BY_BYTE[t[3]] is not None
        and not t[4]
        and t[6] <= length - HEADER_SIZE
    )


def _header_problem(t: tuple[int, ...], max_frame_size: int) -> str | None:
    length, magic, version, kind, flags, _stage, envelope_size, _request = t
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
    if flags:
        return f"flag bits 0x{flags:02x} are set, and this protocol version defines none"
    if envelope_size > length - HEADER_SIZE:
        return f"envelope of {envelope_size} bytes does not fit in a frame of {length} bytes"
    return None


def peek_header(
    buf: bytes | bytearray | memoryview, offset: int = 0, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> Header | None:
    """The header of the frame that starts at `offset`, or None if fewer than HEADER_SIZE bytes
    are there.

    Validates the header (magic, version, kind, flags, sizes), not the envelope; raises
    RemoteProtocolError for a bad one.
    """
    if len(buf) - offset < HEADER_SIZE:
        return None
    t = _HEADER.unpack_from(buf, offset)
    if not _header_ok(t, max_frame_size):
        raise RemoteProtocolError(f"{_header_problem(t, max_frame_size)} (frame at stream offset {offset})")
    return _tuple_new(Header, t)


def pack_header(kind: int, *, stage: int, request_id: int, envelope_size: int, payload_size: int) -> bytes:
    """A header, for forwarding an envelope and payload under a new one."""
    length = HEADER_SIZE + envelope_size + payload_size
    try:
        return _HEADER.pack(length, MAGIC, PROTOCOL_VERSION, kind, 0, stage, envelope_size, request_id)
    except struct.error:
        raise LocalProtocolError(
            _range_problem(kind=(kind, 255), stage=(stage, _U32), request_id=(request_id, _U64), length=(length, _U32))
        ) from None


def _range_problem(**fields: tuple[int, int]) -> str:
    for name, (value, top) in fields.items():
        if not 0 <= value <= top:
            return f"{name}={value} is outside the range 0..{top} that the frame header holds"
    return "a header field is out of range"  # unreachable while callers list every field


# ---------------------------------------------------------------- encoding


def encode_frame(
    kind: Kind | int,
    *,
    stage: int = 0,
    request_id: int = 0,
    ancestry: Sequence[int] = (),
    payload: bytes | bytearray | memoryview = b"",
    part_sizes: Sequence[int] = (),
    body: Body = None,
    status: int = 0,
    opened: bool = False,
    trace: bytes = b"",
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
    if status or opened:
        problem = _flag_problem(kind, status, opened)
        if problem is not None:
            raise LocalProtocolError(problem)
    if trace:
        problem = _trace_problem(kind, trace)
        if problem is not None:
            raise LocalProtocolError(problem)
    if ancestry or part_sizes or body is not None or status or opened or trace:
        try:
            envelope = _encode_envelope(ancestry, part_sizes, body, status, opened, trace)
        except (ValueError, TypeError) as exc:
            raise LocalProtocolError(
                _envelope_problem(ancestry, part_sizes) or f"cannot encode the frame envelope: {exc}"
            ) from None
    else:
        envelope = b""
    header = pack_header(
        kind, stage=stage, request_id=request_id, envelope_size=len(envelope), payload_size=len(payload)
    )
    return b"".join((header, envelope, payload))


# The kinds `encode_item` takes: per-item frames whose body, if any, is optional.
_ITEM_KINDS = frozenset((Kind.DATA, Kind.ACK, Kind.OPEN, Kind.FLUSH, Kind.FLUSH_DONE, Kind.CANCEL,
                         Kind.CREDIT, Kind.PARTIAL))
_BYTE = tuple(bytes((i,)) for i in range(256))
_OPENED = b"\x38\x01"  # field 7, varint 1
_TRACE = b"\x6a" + bytes((TRACE_CONTEXT_SIZE,))  # field 13, length-delimited, 25 bytes
_FLUSH = Kind.FLUSH


def encode_item(
    kind: Kind | int,
    stage: int,
    request_id: int,
    ancestry: tuple[int, ...] = (),
    payload: bytes = b"",
    status: int = 0,
    part_sizes: tuple[int, ...] | list[int] = (),
    opened: bool = False,
    trace: bytes = b"",
) -> bytes:
    """`encode_frame(kind, stage=, request_id=, ancestry=, payload=, status=, part_sizes=,
    opened=, trace=)`, the same bytes.

    The per-item path of the router and the workers: when the envelope holds at most the
    ancestry, part sizes, a status or `opened` (each packed list under 128 bytes) and a DATA
    frame's trace context, it is written here as protobuf writes it (packed fields 1 and 3,
    then field 6 or 7, then field 13) instead of
    through a protobuf message and `encode_frame`'s checks (benchmarks/frames.py times both).
    Anything else goes through `encode_frame`, which also says what is wrong.
    """
    if kind in _ITEM_KINDS and type(status) is int and 0 <= status <= _STATUS_MAX:
        envelope: bytes | None = b""
        if ancestry:
            if min(ancestry) >= 0 and max(ancestry) < 128:
                packed: bytes | None = bytes(ancestry)  # one byte per index: the common case
            else:
                packed = pack_uvarints(ancestry, _U32)
            if packed is None or len(packed) >= 128:
                envelope = None
            else:
                envelope = b"\x0a" + _BYTE[len(packed)] + packed
        if part_sizes and envelope is not None:
            packed = pack_uvarints(part_sizes, _U32)
            if packed is None or len(packed) >= 128 or sum(part_sizes) != len(payload):
                envelope = None
            else:
                envelope += b"\x1a" + _BYTE[len(packed)] + packed
        if envelope is not None:
            if status or opened:
                if not opened and kind in _STATUS_KINDS:
                    envelope += b"\x30" + _BYTE[status]
                elif not status and kind == _FLUSH:
                    envelope += _OPENED
                else:
                    envelope = None  # a flag its kind does not carry: encode_frame says so
            if trace and envelope is not None:
                if kind is Kind.DATA and len(trace) == TRACE_CONTEXT_SIZE:
                    envelope += _TRACE + trace
                else:
                    envelope = None  # encode_frame says what is wrong
            if envelope is not None:
                try:
                    header = _HEADER.pack(HEADER_SIZE + len(envelope) + len(payload), MAGIC, PROTOCOL_VERSION,
                                          kind, 0, stage, len(envelope), request_id)
                except struct.error:
                    pass  # out of range: encode_frame says which field
                else:
                    return header + envelope + payload if envelope else header + payload
    return encode_frame(kind, stage=stage, request_id=request_id, ancestry=ancestry, payload=payload,
                        status=status, part_sizes=part_sizes, opened=opened, trace=trace)


def _envelope_problem(ancestry: Sequence[int], part_sizes: Sequence[int]) -> str | None:
    # Only called once protobuf refused a value, to say which field it was.
    checks = [("ancestry index", i) for i in ancestry] + [("part size", i) for i in part_sizes]
    for name, value in checks:
        if not isinstance(value, int) or not 0 <= value <= _U32:
            return f"{name} {value!r} is not an integer in the range 0..{_U32} that the envelope holds"
    return None


def _encode_envelope(
    ancestry: Sequence[int], part_sizes: Sequence[int], body: Body, status: int, opened: bool,
    trace: bytes = b"",
) -> bytes:
    env = wire_pb2.Envelope()
    if ancestry:
        env.ancestry.extend(ancestry)
    if part_sizes:
        env.part_sizes.extend(part_sizes)
    if status:
        env.status = status
    if opened:
        env.opened = True
    if trace:
        env.trace_context = bytes(trace)
    if body is None:
        pass
    elif type(body) is str:
        env.reason = body
    elif type(body) is ErrorBody:
        env.error.SetInParent()
        env.error.message = body.message
        env.error.exc_type = body.exc_type
        env.error.traceback = body.traceback
    elif type(body) is Hello:
        env.hello.SetInParent()
        env.hello.stage = body.stage
        env.hello.slot = body.slot
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


# ---------------------------------------------------------------- decoding


def _decode_body(env: wire_pb2.Envelope) -> Body:
    which = env.WhichOneof("body")
    if which is None:
        return None
    if which == "reason":
        return env.reason
    if which == "error":
        e = env.error
        return ErrorBody(e.message, e.exc_type, e.traceback)
    if which == "hello":
        h = env.hello
        return Hello(h.stage, h.slot, h.protocol_version, h.pid, h.nonce, h.proof)
    if which == "challenge":
        return Challenge(env.challenge.nonce)
    r = env.ready
    return Ready(r.stage_index, r.proof)


def _decode_frame(t: tuple[int, ...], mv: memoryview, pos: int) -> Frame:
    """The frame whose header `t` was unpacked at `mv[pos:]`; raises RemoteProtocolError."""
    length, _magic, _version, kind, _flags, stage, envelope_size, request_id = t
    start = pos + HEADER_SIZE
    stop = start + envelope_size
    payload = bytes(mv[stop : pos + length])
    plain = _decode_plain_envelope(mv, start, stop) if envelope_size else _EMPTY_ENVELOPE
    if plain is not None:
        ancestry, part_sizes, status, opened, trace = plain
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
        ancestry, part_sizes, status, opened = tuple(env.ancestry), tuple(env.part_sizes), env.status, env.opened
        trace = env.trace_context
    if part_sizes and sum(part_sizes) != len(payload):
        raise RemoteProtocolError(
            f"part sizes add up to {sum(part_sizes)} bytes, but the payload has {len(payload)}"
        )
    if status or opened:
        if not 0 <= status <= _STATUS_MAX:
            raise RemoteProtocolError(f"unknown status {status}")
        problem = _flag_problem(kind, status, opened)
        if problem is not None:
            raise RemoteProtocolError(problem)
    if trace:
        problem = _trace_problem(kind, trace)
        if problem is not None:
            raise RemoteProtocolError(problem)
    return _tuple_new(
        Frame, (_KIND_BY_BYTE[kind], stage, request_id, ancestry, payload, part_sizes, body, status, opened,
                trace)
    )


# The envelope of most frames holds only ancestry, part sizes and a status or `opened`. Reading
# those through protobuf's Python objects cost about 2.5x more than this loop (FromString, then a
# Python object per repeated field), so such envelopes are read here when they are in the form
# protobuf writes them: each field at most once, repeated fields packed, values in range.
# Anything else (a body, unknown or reserved fields, other valid encodings, garbage) returns None
# and goes to protobuf, so the result is always what protobuf would have read; a test checks it.
_EMPTY_ENVELOPE = ((), (), 0, False, b"")
_TAG_ANCESTRY, _TAG_PART_SIZES, _TAG_STATUS, _TAG_OPENED, _TAG_TRACE = 0x0A, 0x1A, 0x30, 0x38, 0x6A


def _decode_plain_envelope(
    buf: memoryview, pos: int, stop: int
) -> tuple[tuple[int, ...], tuple[int, ...], int, bool, bytes] | None:
    ancestry: tuple[int, ...] = ()
    part_sizes: tuple[int, ...] = ()
    status = 0
    opened = False
    trace = b""
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
            read = read_uvarint(buf, pos - 1, stop)
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
                    read = read_uvarint(packed, at, value)
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
        elif tag == _TAG_STATUS and value <= _STATUS_MAX:
            status = value
        elif tag == _TAG_OPENED and value <= 1:
            opened = value == 1
        elif tag == _TAG_TRACE:
            end = pos + value
            if end > stop:
                return None
            trace = bytes(buf[pos:end])
            pos = end
        else:
            return None
    return ancestry, part_sizes, status, opened, trace
