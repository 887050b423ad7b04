"""The wire between the router and its replicas: frames, streams of frames, the TCP handshake
and the payload codec. Nothing here does I/O; the socket shells in altoflow/runtime do.

    frame.py      the frame format: layout, kinds, bodies, encode and decode
    stream.py     FrameReader and FrameWriter: frames to and from a byte stream
    handshake.py  the HMAC challenge and response of replicas that connect over TCP
    codec.py      the values inside payloads
    varint.py     the varints that frame.py and codec.py both read and write
    wire.proto    the frame envelope (wire_pb2 is generated from it)

This package exports what the runtime uses; the modules hold the rest (header layout,
forwarding undecoded frames, statistics) for tests and benchmarks.
"""

from altoflow.wire.codec import Codec, CodecError, DecodeError, EncodeError
from altoflow.wire.frame import (
    FANOUT_CREDIT,
    FANOUT_WINDOW,
    STATUS_CODES,
    STATUS_NAMES,
    Challenge,
    ErrorBody,
    Frame,
    Hello,
    Kind,
    LocalProtocolError,
    ProtocolError,
    Ready,
    RemoteProtocolError,
    encode_frame,
)
from altoflow.wire.handshake import (
    HANDSHAKE_TIMEOUT,
    NONCE_SIZE,
    PRE_AUTH_MAX_FRAME_SIZE,
    AuthenticationError,
    replica_proof,
    router_proof,
    verify_proof,
)
from altoflow.wire.stream import FrameReader, FrameWriter

__all__ = [
    "FANOUT_CREDIT",
    "FANOUT_WINDOW",
    "HANDSHAKE_TIMEOUT",
    "NONCE_SIZE",
    "PRE_AUTH_MAX_FRAME_SIZE",
    "STATUS_CODES",
    "STATUS_NAMES",
    "AuthenticationError",
    "Challenge",
    "Codec",
    "CodecError",
    "DecodeError",
    "EncodeError",
    "ErrorBody",
    "Frame",
    "FrameReader",
    "FrameWriter",
    "Hello",
    "Kind",
    "LocalProtocolError",
    "ProtocolError",
    "Ready",
    "RemoteProtocolError",
    "encode_frame",
    "replica_proof",
    "router_proof",
    "verify_proof",
]
