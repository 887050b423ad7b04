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
    CANCEL: _ClassVar[Kind]
    SHUTDOWN: _ClassVar[Kind]
    HEARTBEAT: _ClassVar[Kind]
    OPEN: _ClassVar[Kind]
    FLUSH_DONE: _ClassVar[Kind]
    CREDIT: _ClassVar[Kind]
    PARTIAL: _ClassVar[Kind]

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OK: _ClassVar[Status]
    DROPPED: _ClassVar[Status]
    FAILED: _ClassVar[Status]
KIND_UNSPECIFIED: Kind
HELLO: Kind
CHALLENGE: Kind
READY: Kind
DATA: Kind
ACK: Kind
FLUSH: Kind
CANCEL: Kind
SHUTDOWN: Kind
HEARTBEAT: Kind
OPEN: Kind
FLUSH_DONE: Kind
CREDIT: Kind
PARTIAL: Kind
OK: Status
DROPPED: Status
FAILED: Status

class Hello(_message.Message):
    __slots__ = ("protocol_version", "stage", "slot", "pid", "nonce", "proof")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    stage: str
    slot: int
    pid: int
    nonce: bytes
    proof: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., stage: _Optional[str] = ..., slot: _Optional[int] = ..., pid: _Optional[int] = ..., nonce: _Optional[bytes] = ..., proof: _Optional[bytes] = ...) -> None: ...

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

class ErrorBody(_message.Message):
    __slots__ = ("message", "exc_type", "traceback")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EXC_TYPE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    message: str
    exc_type: str
    traceback: str
    def __init__(self, message: _Optional[str] = ..., exc_type: _Optional[str] = ..., traceback: _Optional[str] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("ancestry", "part_sizes", "status", "opened", "hello", "challenge", "ready", "error", "reason", "trace_context")
    ANCESTRY_FIELD_NUMBER: _ClassVar[int]
    PART_SIZES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OPENED_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ancestry: _containers.RepeatedScalarFieldContainer[int]
    part_sizes: _containers.RepeatedScalarFieldContainer[int]
    status: Status
    opened: bool
    hello: Hello
    challenge: Challenge
    ready: Ready
    error: ErrorBody
    reason: str
    trace_context: bytes
    def __init__(self, ancestry: _Optional[_Iterable[int]] = ..., part_sizes: _Optional[_Iterable[int]] = ..., status: _Optional[_Union[Status, str]] = ..., opened: bool = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., challenge: _Optional[_Union[Challenge, _Mapping]] = ..., ready: _Optional[_Union[Ready, _Mapping]] = ..., error: _Optional[_Union[ErrorBody, _Mapping]] = ..., reason: _Optional[str] = ..., trace_context: _Optional[bytes] = ...) -> None: ...
