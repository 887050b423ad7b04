from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    HELLO: _ClassVar[Kind]
    CHALLENGE: _ClassVar[Kind]
    READY: _ClassVar[Kind]
    DATA: _ClassVar[Kind]
    ACK: _ClassVar[Kind]
    FLUSH: _ClassVar[Kind]
    ERROR: _ClassVar[Kind]
    CANCEL: _ClassVar[Kind]
    SHUTDOWN: _ClassVar[Kind]
    HEARTBEAT: _ClassVar[Kind]
    OPEN: _ClassVar[Kind]
    FLUSH_DONE: _ClassVar[Kind]

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OK: _ClassVar[Status]
    DROPPED: _ClassVar[Status]
    FAILED: _ClassVar[Status]

class TracePoint(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRACE_POINT_UNSPECIFIED: _ClassVar[TracePoint]
    SENT: _ClassVar[TracePoint]
    ROUTED: _ClassVar[TracePoint]
    RECEIVED: _ClassVar[TracePoint]
    STARTED: _ClassVar[TracePoint]
    FINISHED: _ClassVar[TracePoint]
KIND_UNSPECIFIED: Kind
HELLO: Kind
CHALLENGE: Kind
READY: Kind
DATA: Kind
ACK: Kind
FLUSH: Kind
ERROR: Kind
CANCEL: Kind
SHUTDOWN: Kind
HEARTBEAT: Kind
OPEN: Kind
FLUSH_DONE: Kind
OK: Status
DROPPED: Status
FAILED: Status
TRACE_POINT_UNSPECIFIED: TracePoint
SENT: TracePoint
ROUTED: TracePoint
RECEIVED: TracePoint
STARTED: TracePoint
FINISHED: TracePoint

class TraceStamp(_message.Message):
    __slots__ = ("stage", "point", "ns")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    POINT_FIELD_NUMBER: _ClassVar[int]
    NS_FIELD_NUMBER: _ClassVar[int]
    stage: int
    point: TracePoint
    ns: int
    def __init__(self, stage: _Optional[int] = ..., point: _Optional[_Union[TracePoint, str]] = ..., ns: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_version", "stage", "replica_id", "pid", "nonce", "proof")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    stage: str
    replica_id: int
    pid: int
    nonce: bytes
    proof: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., stage: _Optional[str] = ..., replica_id: _Optional[int] = ..., pid: _Optional[int] = ..., nonce: _Optional[bytes] = ..., proof: _Optional[bytes] = ...) -> None: ...

class Challenge(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class Ready(_message.Message):
    __slots__ = ("stage_index", "proof")
    STAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    stage_index: int
    proof: bytes
    def __init__(self, stage_index: _Optional[int] = ..., proof: _Optional[bytes] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("message", "exc_type", "traceback")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EXC_TYPE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    message: str
    exc_type: str
    traceback: str
    def __init__(self, message: _Optional[str] = ..., exc_type: _Optional[str] = ..., traceback: _Optional[str] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("ancestry", "seq", "part_sizes", "produced", "status", "trace", "hello", "challenge", "ready", "error", "reason")
    ANCESTRY_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PART_SIZES_FIELD_NUMBER: _ClassVar[int]
    PRODUCED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ancestry: _containers.RepeatedScalarFieldContainer[int]
    seq: int
    part_sizes: _containers.RepeatedScalarFieldContainer[int]
    produced: int
    status: Status
    trace: _containers.RepeatedCompositeFieldContainer[TraceStamp]
    hello: Hello
    challenge: Challenge
    ready: Ready
    error: Error
    reason: str
    def __init__(self, ancestry: _Optional[_Iterable[int]] = ..., seq: _Optional[int] = ..., part_sizes: _Optional[_Iterable[int]] = ..., produced: _Optional[int] = ..., status: _Optional[_Union[Status, str]] = ..., trace: _Optional[_Iterable[_Union[TraceStamp, _Mapping]]] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., challenge: _Optional[_Union[Challenge, _Mapping]] = ..., ready: _Optional[_Union[Ready, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...
