"""The payload codec: values that cross a socket between stages.

The workers encode what their stages return and decode what their stages take; the router
forwards payloads as opaque bytes and decodes only the outputs it streams to the client. A
payload is one version byte, then one value: a tag byte followed by the tag's body, recursively
for containers. Lengths and counts are unsigned varints (varint.py).

    N None   F False   T True
    i int in int64, 8 bytes       I any other int: varint n, n bytes two's complement
    d float, 8 bytes (IEEE 754)   s str: varint n, n bytes UTF-8 (surrogates kept)
    b bytes   B bytearray: varint n, n bytes
    l list   t tuple   S set   Z frozenset: varint count, then the items
    m dict: varint count, then key, value, key, value, ...
    a numpy array   g numpy scalar: varint n, dtype.str (ASCII), varint ndim, ndim varints,
                                    then the C-order element bytes
    J pydantic model: varint n, n bytes of model_dump_json()
    D dataclass or attrs instance: varint n, n bytes of "module:qualname" (UTF-8), varint count,
                                   then per field: varint n, n bytes of its name, its value
    P protobuf message: varint n, full name (ASCII), varint m, m bytes of SerializeToString()
    X pickle (only with Codec(allow_pickle=True)): varint n, type name, varint m, m bytes

Decoding never runs code chosen by the sender: there is no pickle unless both ends opt in,
numpy arrays are rebuilt from their bytes (object dtype is refused both ways), protobuf classes
are looked up among those this process has imported, and pydantic classes come only from the
annotation the decoding stage declared. Without an annotation a pydantic model decodes to the
dict of its JSON, and an Enum member (sent as its value) to that value.

A dataclass (or attrs class) instance decodes into the annotated class of that name, or else into
the class its module and qualified name point to among the modules this process has imported
(a worker imports the user's app, so its classes are there), never by importing anything; it is
rebuilt field by field without running ``__init__``, as pickle would, so frozen classes and
fields with ``init=False`` come back as they left. Where no such class is loaded, it decodes to
the dict of its fields, as a pydantic model does. Any other class is refused, naming the type and
the fix.

Values nest at most MAX_DEPTH levels (containers, dataclasses): deeper ones are an EncodeError or
a DecodeError, never a RecursionError.
"""

from __future__ import annotations

import enum
import inspect
import json
import pickle
import re
import struct
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import fields as dataclass_fields
from dataclasses import is_dataclass
from functools import lru_cache
from typing import Any, Literal

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError as _ProtobufDecodeError
from google.protobuf.message import Message
from pydantic import BaseModel

from altoflow.wire.varint import MAX_VARINT_SIZE, encode_uvarint, read_uvarint

__all__ = [
    "CODEC_VERSION",
    "MAX_DEPTH",
    "Codec",
    "CodecError",
    "DecodeError",
    "EncodeError",
    "decode_value",
    "encode_value",
    "type_name",
    "uncarried_type",
    "unencodable_annotation_fix",
]

CODEC_VERSION = 1
# Deeper values are refused both ways: it bounds the recursion of the decoder on hostile input,
# and on the encoding side it catches a value that contains itself. The HTTP layer refuses
# request bodies nested deeper than this too, so that what is accepted can always be sent on.
MAX_DEPTH = 100
_TOO_DEEP = (
    f"it is nested more than {MAX_DEPTH} levels deep (lists, dicts, dataclasses; does it contain "
    f"itself?). Fix: flatten it, or send the deep part as a JSON string"
)

_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1
# What dtype.str looks like for the supported kinds: byte order, kind, item size, datetime unit.
_DTYPE_RE = re.compile(r"[<>|=][biufcmMSU][0-9]{1,9}(\[[0-9]*[A-Za-z]{1,2}\])?")
_NUMPY_KINDS = "biufcmMSU"
_SUPPORTED = (
    "None, bool, int, float, str, bytes, bytearray, list, tuple, dict, set, frozenset, "
    "numpy arrays and scalars, dataclasses, attrs classes, pydantic models and protobuf messages"
)
# Where the last resort is pickle, what a user types to get it.
_PICKLE_FIX = (
    "or, for replicas on local UNIX sockets only, serve with `altoflow serve --allow-pickle` "
    "to pickle it"
)


class CodecError(Exception):
    """A value could not cross the wire."""


class EncodeError(CodecError, TypeError):
    """This process tried to send a value the codec cannot carry."""


class DecodeError(CodecError, ValueError):
    """The bytes received are not a payload this codec accepts."""


class _Unencodable(Exception):
    # Raised deep in the encoder and re-raised on the way out with the path to the value
    # (e.g. value["claims"][2]), which is only worth computing when something went wrong.
    def __init__(self, value: object, reason: str, path: str = "") -> None:
        self.value = value
        self.reason = reason
        self.path = path


def _type_name(tp: Any) -> str:
    """How messages name a type: an app file's module by the file's name (app.Point), not by
    the name it was loaded under (app_3f2a9c1d.Point)."""
    if not isinstance(tp, type):
        return repr(tp)
    module = tp.__module__
    if module == "builtins":
        return tp.__qualname__
    loaded = sys.modules.get(module)
    if loaded is not None and getattr(loaded, "__altoflow_file__", False) and loaded.__file__:
        module = loaded.__file__.rpartition("/")[2].removesuffix(".py")
    return f"{module}.{tp.__qualname__}"


type_name = _type_name


def _record_fields(tp: type) -> tuple[str, ...] | None:
    """The field names of a dataclass or attrs class, or None for any other type."""
    if is_dataclass(tp):
        return tuple(f.name for f in dataclass_fields(tp))
    attr = sys.modules.get("attr")  # attrs, if the app uses it; never imported here
    if attr is not None and attr.has(tp):
        return tuple(a.name for a in attr.fields(tp))
    return None


class Codec:
    """Encodes values to payload bytes and back.

    `allow_pickle=True` pickles values the format has no tag for, and unpickles them on the other
    side. Unpickling runs code that the sender chose, so it is for replicas on a local UNIX socket
    whose other end is this same deployment, never for TCP: `transport="tcp"` refuses it. Both
    ends must opt in; a codec without it refuses pickled payloads with a DecodeError.
    """

    __slots__ = ("allow_pickle", "transport")

    def __init__(self, *, allow_pickle: bool = False, transport: Literal["unix", "tcp"] = "unix") -> None:
        if transport not in ("unix", "tcp"):
            raise ValueError(f"transport must be 'unix' or 'tcp', not {transport!r}")
        if allow_pickle and transport == "tcp":
            raise ValueError(
                "allow_pickle=True is refused for transport='tcp': unpickling runs code chosen by "
                "the sender. Send pydantic models or protobuf messages over TCP instead."
            )
        self.allow_pickle = allow_pickle
        self.transport = transport

    def __repr__(self) -> str:
        return f"Codec(allow_pickle={self.allow_pickle}, transport={self.transport!r})"

    # ------------------------------------------------------------------ encoding

    def encode(self, value: object) -> bytes:
        """The payload bytes of `value`; raises EncodeError naming what cannot be sent and why."""
        out = bytearray((CODEC_VERSION,))
        try:
            self._encode(value, out, 0)
        except _Unencodable as exc:
            raise EncodeError(self._explain(exc)) from None
        return bytes(out)

    def _encode(self, v: Any, out: bytearray, depth: int) -> None:
        t = type(v)
        if t is str:
            data = v.encode("utf-8", "surrogatepass")
            out += b"s"
            out += encode_uvarint(len(data))
            out += data
        elif t is int:
            if _I64_MIN <= v <= _I64_MAX:
                out += b"i"
                out += _I64.pack(v)
            else:
                self._encode_bigint(v, out)
        elif t is float:
            out += b"d"
            out += _F64.pack(v)
        elif v is None:
            out += b"N"
        elif t is bool:
            out += b"T" if v else b"F"
        elif t is bytes or t is bytearray:
            out += b"b" if t is bytes else b"B"
            out += encode_uvarint(len(v))
            out += v
        elif t is list or t is tuple or t is set or t is frozenset:
            self._encode_items(_SEQUENCE_TAGS[t], v, out, depth)
        elif t is dict:
            if depth >= MAX_DEPTH:
                raise _Unencodable(v, _TOO_DEEP)
            out += b"m"
            out += encode_uvarint(len(v))
            key = None
            try:
                for key, item in v.items():
                    self._encode(key, out, depth + 1)
                    self._encode(item, out, depth + 1)
            except _Unencodable as exc:
                exc.path = f"[{key!r}]{exc.path}"
                raise
        else:
            self._encode_other(v, out, depth)

    def _encode_items(self, tag: bytes, v: Any, out: bytearray, depth: int) -> None:
        if depth >= MAX_DEPTH:
            raise _Unencodable(v, _TOO_DEEP)
        out += tag
        out += encode_uvarint(len(v))
        i = 0
        try:
            for i, item in enumerate(v):
                self._encode(item, out, depth + 1)
        except _Unencodable as exc:
            exc.path = (f"[{i}]" if tag in b"lt" else " (an element)") + exc.path
            raise

    def _encode_record(self, v: Any, names: tuple[str, ...], out: bytearray, depth: int) -> None:
        if depth >= MAX_DEPTH:
            raise _Unencodable(v, _TOO_DEEP)
        tp = type(v)
        name = f"{tp.__module__}:{tp.__qualname__}".encode("utf-8", "surrogatepass")
        out += b"D"
        out += encode_uvarint(len(name))
        out += name
        out += encode_uvarint(len(names))
        for field in names:
            data = field.encode("utf-8", "surrogatepass")
            out += encode_uvarint(len(data))
            out += data
            try:
                self._encode(getattr(v, field), out, depth + 1)
            except _Unencodable as exc:
                exc.path = f".{field}{exc.path}"
                raise

    def _encode_bigint(self, v: int, out: bytearray) -> None:
        # One byte more than the magnitude needs, so that the sign bit always fits.
        data = v.to_bytes(v.bit_length() // 8 + 1, "little", signed=True)
        out += b"I"
        out += encode_uvarint(len(data))
        out += data

    def _encode_other(self, v: Any, out: bytearray, depth: int) -> None:
        # Subclasses and library types: after the exact-type checks, as they are rarer.
        numpy = sys.modules.get("numpy")
        if numpy is not None and isinstance(v, (numpy.ndarray, numpy.generic)):
            self._encode_numpy(numpy, v, out)
        elif isinstance(v, BaseModel):
            try:
                data = v.model_dump_json().encode()
            except Exception as exc:  # noqa: BLE001  # pydantic reports unserialisable fields with several types
                raise _Unencodable(v, f"pydantic cannot serialise it to JSON: {exc}") from None
            out += b"J"
            out += encode_uvarint(len(data))
            out += data
        elif isinstance(v, Message):
            name = v.DESCRIPTOR.full_name.encode()
            data = v.SerializeToString()
            out += b"P"
            out += encode_uvarint(len(name))
            out += name
            out += encode_uvarint(len(data))
            out += data
        elif isinstance(v, enum.Enum):
            # Sent as its value; the annotation of the receiving parameter brings the member back.
            self._encode(v.value, out, depth + 1)
        elif (names := _record_fields(type(v))) is not None:
            self._encode_record(v, names, out, depth)
        elif isinstance(v, int):
            self._encode(int(v), out, depth)
        elif isinstance(v, float):
            self._encode(float(v), out, depth)
        elif isinstance(v, str):
            self._encode(str(v), out, depth)
        elif isinstance(v, (bytes, bytearray)):
            self._encode(bytes(v), out, depth)
        elif isinstance(v, (list, tuple, set, frozenset)):
            for base, tag in _SEQUENCE_TAGS.items():
                if isinstance(v, base):
                    self._encode_items(tag, v, out, depth)
                    return
        elif isinstance(v, dict):
            self._encode(dict(v), out, depth)
        elif self.allow_pickle:
            self._encode_pickle(v, out)
        else:
            raise _Unencodable(v, "")

    def _encode_numpy(self, numpy: Any, v: Any, out: bytearray) -> None:
        arr = numpy.asarray(v)
        dtype = arr.dtype
        if dtype.kind not in _NUMPY_KINDS or dtype.fields is not None or dtype.itemsize == 0:
            if self.allow_pickle:
                self._encode_pickle(v, out)
                return
            raise _Unencodable(
                v,
                f"its dtype is {dtype}, and the codec sends only numeric, bool, datetime, bytes and "
                "str dtypes, as raw bytes. Fix: convert it (arr.astype(float), arr.astype(str)) "
                "or send arr.tolist()",
            )
        name = dtype.str.encode()
        out += b"a" if isinstance(v, numpy.ndarray) else b"g"
        out += encode_uvarint(len(name))
        out += name
        out += encode_uvarint(arr.ndim)
        for dim in arr.shape:
            out += encode_uvarint(dim)
        # view(uint8) rather than the buffer protocol, which datetime64 does not support.
        out += numpy.ascontiguousarray(arr).reshape(-1).view(numpy.uint8).data

    def _encode_pickle(self, v: Any, out: bytearray) -> None:
        try:
            data = pickle.dumps(v, protocol=5)
        except Exception as exc:  # noqa: BLE001  # pickle raises several types for unpicklable objects
            raise _Unencodable(v, f"pickle cannot serialise it either: {exc}") from None
        name = _type_name(type(v)).encode()
        out += b"X"
        out += encode_uvarint(len(name))
        out += name
        out += encode_uvarint(len(data))
        out += data

    def _explain(self, exc: _Unencodable) -> str:
        tp = type(exc.value)
        path = exc.path if len(exc.path) <= 80 else f"{exc.path[:60]}...{exc.path[-16:]}"
        where = f" at value{path}" if path else ""
        head = f"cannot send a value of type {_type_name(tp)}{where} over the wire"
        if exc.reason:
            return f"{head}: {exc.reason}."
        return f"{head}: the codec sends {_SUPPORTED}. Fix: {_fix_for(tp, tcp=self.transport == 'tcp')}."

    # ------------------------------------------------------------------ decoding

    def decode(self, data: bytes | bytearray | memoryview, annotation: Any = None) -> Any:
        """The value in payload `data`. Raises DecodeError for anything that is not a payload.

        `annotation` is the receiving parameter's type hint. It turns pydantic JSON back into the
        model, an Enum value back into the member, and checks a protobuf message's class; it is
        followed into list[X], tuple[X, ...], dict[K, V], X | None and Annotated[X, ...].
        """
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        if not len(mv):
            raise DecodeError("empty payload: expected a version byte and a value")
        if mv[0] != CODEC_VERSION:
            raise DecodeError(
                f"payload codec version {mv[0]}, this process reads version {CODEC_VERSION}: "
                "run the same altoflow version on every replica"
            )
        try:
            value, pos = self._decode(mv, 1, annotation, 0)
        except (IndexError, struct.error):
            raise DecodeError("payload is truncated") from None
        if pos != len(mv):
            raise DecodeError(f"{len(mv) - pos} stray bytes after the value")
        return value

    def _decode(self, mv: memoryview, pos: int, hint: Any, depth: int) -> tuple[Any, int]:
        tag = mv[pos]
        pos += 1
        if tag == 0x73:  # s
            n, pos = _read_len(mv, pos)
            try:
                value: Any = str(mv[pos : pos + n], "utf-8", "surrogatepass")
            except UnicodeDecodeError as exc:
                raise DecodeError(f"a string is not valid UTF-8: {exc.reason}") from None
            pos += n
        elif tag == 0x69:  # i
            value = _I64.unpack_from(mv, pos)[0]
            pos += 8
        elif tag == 0x64:  # d
            return _F64.unpack_from(mv, pos)[0], pos + 8
        elif tag == 0x4E:  # N
            return None, pos
        elif tag == 0x54:  # T
            return True, pos
        elif tag == 0x46:  # F
            return False, pos
        elif tag == 0x62 or tag == 0x42:  # b B
            n, pos = _read_len(mv, pos)
            value = bytes(mv[pos : pos + n]) if tag == 0x62 else bytearray(mv[pos : pos + n])
            return value, pos + n
        elif tag in _CONTAINER_TAGS:
            return self._decode_container(tag, mv, pos, hint, depth)
        elif tag == 0x49:  # I
            n, pos = _read_len(mv, pos)
            value = int.from_bytes(mv[pos : pos + n], "little", signed=True)
            pos += n
        elif tag == 0x61 or tag == 0x67:  # a g
            return _decode_numpy(tag, mv, pos)
        elif tag == 0x4A:  # J
            return _decode_model(mv, pos, hint)
        elif tag == 0x44:  # D
            return self._decode_record(mv, pos, hint, depth)
        elif tag == 0x50:  # P
            return _decode_protobuf(mv, pos, hint)
        elif tag == 0x58:  # X
            return self._decode_pickle(mv, pos)
        else:
            raise DecodeError(f"unknown value tag 0x{tag:02x}")
        if hint is not None:
            value = _to_enum(value, hint)
        return value, pos

    def _decode_container(self, tag: int, mv: memoryview, pos: int, hint: Any, depth: int) -> tuple[Any, int]:
        if depth >= MAX_DEPTH:
            raise DecodeError(f"payload is nested more than {MAX_DEPTH} levels deep")
        count, pos = _read_len(mv, pos)
        # Every item takes at least one byte, so a hostile count fails here, not in a long loop.
        if count > len(mv) - pos:
            raise DecodeError("payload is truncated")
        decode = self._decode
        depth += 1
        if tag == 0x6D:  # m
            key_hint, value_hint = _mapping_hints(hint)
            result: dict[Any, Any] = {}
            for _ in range(count):
                key, pos = decode(mv, pos, key_hint, depth)
                item, pos = decode(mv, pos, value_hint, depth)
                try:
                    result[key] = item
                except TypeError:
                    raise DecodeError(f"a dict key of type {type(key).__name__} is unhashable") from None
            return result, pos
        items = []
        if hint is None:
            for _ in range(count):
                item, pos = decode(mv, pos, None, depth)
                items.append(item)
        else:
            hints = _item_hints(hint)
            for i in range(count):
                item, pos = decode(mv, pos, hints(i), depth)
                items.append(item)
        if tag == 0x6C:  # l
            return items, pos
        if tag == 0x74:  # t
            return tuple(items), pos
        try:
            return (set(items) if tag == 0x53 else frozenset(items)), pos
        except TypeError:
            raise DecodeError("a set holds an unhashable item") from None

    def _decode_record(self, mv: memoryview, pos: int, hint: Any, depth: int) -> tuple[Any, int]:
        if depth >= MAX_DEPTH:
            raise DecodeError(f"payload is nested more than {MAX_DEPTH} levels deep")
        name, pos = _read_text(mv, pos, "a class name")
        count, pos = _read_len(mv, pos)
        cls = _record_class(name, hint)
        hints = _field_hints(cls) if cls is not None else {}
        values: dict[str, Any] = {}
        for _ in range(count):
            field, pos = _read_text(mv, pos, "a field name")
            values[field], pos = self._decode(mv, pos, hints.get(field), depth + 1)
        if cls is None:
            return values, pos
        expected = _record_fields(cls) or ()
        if set(values) != set(expected):
            raise DecodeError(
                f"the payload's {name} has the fields {sorted(values)}, and the class of that name "
                f"here has {sorted(expected)}: run the same version of the app on every replica"
            )
        try:
            obj = object.__new__(cls)
            for field, item in values.items():
                object.__setattr__(obj, field, item)  # frozen classes too, as pickle does
        except (TypeError, AttributeError) as exc:
            raise DecodeError(f"cannot rebuild a {_type_name(cls)}: {exc}") from None
        return obj, pos

    def _decode_pickle(self, mv: memoryview, pos: int) -> tuple[Any, int]:
        n, pos = _read_len(mv, pos)
        name = _ascii(mv[pos : pos + n])
        pos += n
        m, pos = _read_len(mv, pos)
        if not self.allow_pickle:
            raise DecodeError(
                f"the payload holds a pickled {name} value, and this codec refuses to unpickle: "
                "unpickling runs code chosen by the sender. Send a dataclass or a pydantic model "
                "instead, " + _PICKLE_FIX
            )
        if pos + m > len(mv):
            raise DecodeError("payload is truncated")
        try:
            return pickle.loads(mv[pos : pos + m]), pos + m
        except Exception as exc:  # noqa: BLE001  # unpickling can fail in any way the pickled classes allow
            raise DecodeError(f"cannot unpickle the {name} value: {exc!r}") from None


_SEQUENCE_TAGS: dict[type, bytes] = {list: b"l", tuple: b"t", set: b"S", frozenset: b"Z"}
_CONTAINER_TAGS = frozenset(b"ltSZm")


def _bad_varint(mv: memoryview, pos: int, what: str) -> DecodeError:
    # read_uvarint gave up: either the payload ends inside the varint, or it runs on too long.
    if len(mv) - pos >= MAX_VARINT_SIZE:
        return DecodeError(f"{what} is longer than {MAX_VARINT_SIZE} bytes")
    return DecodeError("payload is truncated")


def _read_len(mv: memoryview, pos: int) -> tuple[int, int]:
    """A varint that counts bytes or items, checked against what is left of the payload."""
    byte = mv[pos]
    if byte < 0x80:  # the common case, one byte
        n, pos = byte, pos + 1
    else:
        read = read_uvarint(mv, pos, len(mv))
        if read is None:
            raise _bad_varint(mv, pos, "a length")
        n, pos = read
    if n > len(mv) - pos:
        raise DecodeError("payload is truncated")
    return n, pos


def _read_text(mv: memoryview, pos: int, what: str) -> tuple[str, int]:
    n, pos = _read_len(mv, pos)
    try:
        return str(mv[pos : pos + n], "utf-8", "surrogatepass"), pos + n
    except UnicodeDecodeError:
        raise DecodeError(f"{what} is not valid UTF-8") from None


def _ascii(data: memoryview) -> str:
    try:
        return str(data, "ascii")
    except UnicodeDecodeError:
        raise DecodeError("a type name is not ASCII") from None


# ---------------------------------------------------------------- annotations


def _strip(hint: Any) -> Any:
    """The hint without Annotated[...] and without None in an X | None."""
    while True:
        origin = typing.get_origin(hint)
        if origin is typing.Annotated:
            hint = typing.get_args(hint)[0]
        elif origin is typing.Union or origin is types.UnionType:
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            if len(args) != 1:
                return hint
            hint = args[0]
        else:
            return hint


def _candidates(hint: Any, base: type) -> tuple[type, ...]:
    """The classes in `hint` (a class or a union of classes) that subclass `base`.

    Asked for every decoded scalar that has a hint, so the answer is kept per (hint, base):
    hints are the stages' annotations, a few per pipeline.
    """
    try:
        return _kept_candidates(hint, base)
    except TypeError:  # an unhashable hint (Annotated metadata can be)
        return _find_candidates(hint, base)


def _find_candidates(hint: Any, base: type) -> tuple[type, ...]:
    hint = _strip(hint)
    origin = typing.get_origin(hint)
    options = typing.get_args(hint) if origin is typing.Union or origin is types.UnionType else (hint,)
    return tuple(a for a in options if isinstance(a, type) and issubclass(a, base))


_kept_candidates = lru_cache(maxsize=4096)(_find_candidates)


def _item_hints(hint: Any) -> Callable[[int], Any]:
    hint = _strip(hint)
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return lambda i: args[0]
        return lambda i: args[i] if i < len(args) else None
    if len(args) == 1:
        return lambda i: args[0]
    return lambda i: None


def _mapping_hints(hint: Any) -> tuple[Any, Any]:
    if hint is None:
        return None, None
    args = typing.get_args(_strip(hint))
    return (args[0], args[1]) if len(args) == 2 else (None, None)


def _to_enum(value: Any, hint: Any) -> Any:
    for cls in _candidates(hint, enum.Enum):
        try:
            return cls(value)
        except ValueError:
            continue
    return value


# ---------------------------------------------------------------- library types


def _record_class(name: str, hint: Any) -> type | None:
    """The dataclass or attrs class a payload names: the annotated one of that qualified name,
    else the one at that path in a module this process has already imported, else None."""
    module_name, _, qualname = name.partition(":")
    if hint is not None:
        for cls in _candidates(hint, object):
            if cls.__qualname__ == qualname and _record_fields(cls) is not None:
                return cls
    obj: Any = sys.modules.get(module_name)
    for part in qualname.split(".") if obj is not None else ():
        obj = getattr(obj, part, None)
    if isinstance(obj, type) and _record_fields(obj) is not None:
        return obj
    return None


@lru_cache(maxsize=256)
def _field_hints(cls: type) -> dict[str, Any]:
    # The field annotations bring nested pydantic models and Enum members back; a class whose
    # annotations do not resolve decodes its fields without them.
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except Exception:  # noqa: BLE001  # unresolvable forward references raise several types
        return {}


def _fix_for(tp: type, *, tcp: bool) -> str:
    fix = (
        f"make {tp.__name__} a dataclass (@dataclasses.dataclass) or a pydantic model, whose "
        f"instances keep their type across the wire, or convert it to one of those before the "
        f"stage returns it"
    )
    return fix if tcp else f"{fix}; {_PICKLE_FIX}"


# What the codec carries without looking inside: a class annotation that is one of these, or a
# subclass, is fine. Others are checked by uncarried_type.
_CARRIED_BASES: tuple[type, ...] = (
    type(None), bool, int, float, str, bytes, bytearray, list, tuple, set, frozenset, dict,
    BaseModel, Message, enum.Enum,
)
# Generic origins whose arguments are what travels (the items of an iterator, an awaitable's
# result, the members of a union); for the others every argument travels.
_FIRST_ARG_ONLY = frozenset(
    ("Iterator", "Iterable", "Generator", "AsyncIterator", "AsyncIterable", "AsyncGenerator", "Awaitable", "Coroutine")
)


def uncarried_type(annotation: Any) -> type | None:
    """The first class in a type hint whose values the codec cannot carry without pickle, or None.

    Only what the hint says for certain counts: Any, type variables, protocols, abstract base
    classes and unresolved (string) hints are None, since their values may well be carried.
    """
    if annotation is None or annotation is inspect.Parameter.empty or annotation is Any:
        return None
    if isinstance(annotation, (str, typing.TypeVar, typing.ForwardRef)):
        return None
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return uncarried_type(typing.get_args(annotation)[0])
    if origin is not None:
        args = typing.get_args(annotation)
        if origin is typing.Literal:
            return None
        if getattr(origin, "__name__", "") in _FIRST_ARG_ONLY:
            args = args[-1:] if getattr(origin, "__name__", "") == "Coroutine" else args[:1]
        elif isinstance(origin, type) and origin is not typing.Union and origin is not types.UnionType:
            found = uncarried_type(origin)
            if found is not None:
                return found
        for arg in args:
            found = uncarried_type(arg) if arg is not Ellipsis else None
            if found is not None:
                return found
        return None
    if not isinstance(annotation, type):
        return None
    if issubclass(annotation, _CARRIED_BASES) or _record_fields(annotation) is not None:
        return None
    if annotation.__module__ in ("typing", "collections.abc", "abc", "numpy") or getattr(annotation, "_is_protocol", False):
        return None
    if inspect.isabstract(annotation) or annotation is object:
        return None
    return annotation


def unencodable_annotation_fix(tp: type) -> str:
    """What to do about a stage annotated with a class the codec cannot carry."""
    return (
        f"the served runtime sends values between stages with a codec that carries {_SUPPORTED}, "
        f"and not {_type_name(tp)}. Fix: make {tp.__name__} a dataclass (@dataclasses.dataclass) "
        f"or a pydantic model, or annotate with a type the codec carries (e.g. dict); to send it "
        f"pickled instead (`altoflow serve --allow-pickle`, local replicas only), leave the "
        f"annotation off"
    )


def _decode_model(mv: memoryview, pos: int, hint: Any) -> tuple[Any, int]:
    n, pos = _read_len(mv, pos)
    data = mv[pos : pos + n]
    pos += n
    models = _candidates(hint, BaseModel) if hint is not None else []
    problems = []
    for model in models:
        try:
            return model.model_validate_json(bytes(data)), pos
        except ValueError as exc:  # pydantic.ValidationError
            problems.append(f"{model.__name__}: {exc}")
    if problems:
        raise DecodeError("the payload's JSON does not validate as the annotated model: " + "; ".join(problems))
    try:
        return json.loads(bytes(data)), pos
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"a pydantic model's JSON is invalid: {exc}") from None


def _decode_protobuf(mv: memoryview, pos: int, hint: Any) -> tuple[Any, int]:
    n, pos = _read_len(mv, pos)
    name = _ascii(mv[pos : pos + n])
    pos += n
    m, pos = _read_len(mv, pos)
    data = mv[pos : pos + m]
    pos += m
    cls = next((c for c in _candidates(hint, Message) if c.DESCRIPTOR.full_name == name), None) if hint is not None else None
    if cls is None:
        try:
            cls = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(name))
        except KeyError:
            raise DecodeError(
                f"the payload holds a protobuf {name} message, and no such message type is loaded in "
                "this process: annotate the parameter with its class, or import its _pb2 module in "
                "the module that defines the stage"
            ) from None
    try:
        return cls.FromString(bytes(data)), pos
    except _ProtobufDecodeError as exc:
        raise DecodeError(f"the payload's {name} message does not parse: {exc}") from None


def _decode_numpy(tag: int, mv: memoryview, pos: int) -> tuple[Any, int]:
    n, pos = _read_len(mv, pos)
    dtype_str = _ascii(mv[pos : pos + n])
    pos += n
    if not _DTYPE_RE.fullmatch(dtype_str):
        raise DecodeError(f"numpy dtype {dtype_str!r} is not one the codec sends")
    try:
        import numpy
    except ImportError:
        raise DecodeError("the payload holds a numpy array, and numpy is not installed here: pip install numpy") from None
    try:
        dtype = numpy.dtype(dtype_str)
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"bad numpy dtype {dtype_str!r}: {exc}") from None
    if dtype.kind not in _NUMPY_KINDS or dtype.itemsize == 0:
        raise DecodeError(f"numpy dtype {dtype_str!r} is not one the codec sends")
    ndim, pos = _read_len(mv, pos)
    if ndim > 64 or (tag == 0x67 and ndim):
        raise DecodeError(f"numpy value with {ndim} dimensions")
    shape = []
    count = 1
    for _ in range(ndim):
        dim, pos = _read_dim(mv, pos)
        shape.append(dim)
        count *= dim
    nbytes = count * dtype.itemsize
    if nbytes > len(mv) - pos:
        raise DecodeError("payload is truncated")
    if count:
        # A copy, so that the array is writable and does not keep the whole frame alive.
        arr = numpy.frombuffer(mv, dtype=dtype, count=count, offset=pos).reshape(shape).copy()
    else:
        try:
            arr = numpy.zeros(shape, dtype=dtype)
        except ValueError as exc:  # dimensions whose product overflows, beside a 0
            raise DecodeError(f"numpy shape {tuple(shape)}: {exc}") from None
    _check_numpy_content(numpy, arr)
    pos += nbytes
    return (arr[()] if tag == 0x67 else arr), pos


def _read_dim(mv: memoryview, pos: int) -> tuple[int, int]:
    # Dimensions may be 0 and are not byte counts, so _read_len's bound does not apply, but a
    # dimension above the payload size would need another one of 0 and is refused too.
    read = read_uvarint(mv, pos, len(mv))
    if read is None:
        raise _bad_varint(mv, pos, "a numpy dimension")
    n, pos = read
    if n > len(mv):
        raise DecodeError(f"numpy dimension {n} is larger than the payload")
    return n, pos


def _check_numpy_content(numpy: Any, arr: Any) -> None:
    # Values that numpy would store but not read back sanely: bools other than 0 and 1, and
    # code points past U+10FFFF, which crash str() of the element with a SystemError.
    if not arr.size:
        return
    flat = arr.reshape(-1)  # a 0-d array cannot be viewed as another item size
    if arr.dtype.kind == "b" and flat.view(numpy.uint8).max() > 1:
        raise DecodeError("a numpy bool array holds bytes other than 0 and 1")
    if arr.dtype.kind == "U":
        codes = flat.view(arr.dtype.byteorder.replace("|", "=") + "u4")
        if codes.max() > 0x10FFFF:
            raise DecodeError("a numpy str array holds a code point past U+10FFFF")


_DEFAULT = Codec()


def encode_value(value: object) -> bytes:
    """The payload bytes of `value`, with the default codec (no pickle)."""
    return _DEFAULT.encode(value)


def decode_value(data: bytes | bytearray | memoryview, annotation: Any = None) -> Any:
    """The value in payload `data`, with the default codec (no pickle). See Codec.decode."""
    return _DEFAULT.decode(data, annotation)
