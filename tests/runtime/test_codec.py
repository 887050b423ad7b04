"""The payload codec: round trips, annotations, refusals, and decoding hostile bytes."""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import struct
from fractions import Fraction
from typing import Annotated, Any, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import BaseModel

from altoflow.wire import wire_pb2
from altoflow.wire.codec import (
    MAX_DEPTH,
    Codec,
    CodecError,
    DecodeError,
    EncodeError,
    decode_value,
    encode_value,
)
from altoflow.wire.varint import MAX_VARINT_SIZE, encode_uvarint, pack_uvarints, read_uvarint

# Not the default 200 ms deadline: this machine class slows down 2x for seconds at a time, and
# a test must not fail on timing.
relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_same(a: Any, b: Any) -> None:
    """Equal, of the same types all the way down, and NaN equal to NaN."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, float):
        assert struct.pack("<d", a) == struct.pack("<d", b)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)  # insertion order survives
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    else:
        # Sets land here: their elements (hashables below) hold no floats, so == is exact.
        assert a == b


any_text = st.text(st.characters(blacklist_categories=()))  # surrogates included
hashables = st.recursive(
    st.none() | st.booleans() | st.integers() | any_text | st.binary(),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=5,
)
plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats()
    | any_text
    | st.binary()
    | st.binary().map(bytearray),
    lambda inner: st.lists(inner, max_size=4)
    | st.lists(inner, max_size=4).map(tuple)
    | st.dictionaries(hashables, inner, max_size=4)
    | st.sets(hashables, max_size=4)
    | st.frozensets(hashables, max_size=4),
    max_leaves=20,
)


@relaxed
@given(plain_values)
def test_plain_values_round_trip(value: Any) -> None:
    assert_same(decode_value(encode_value(value)), value)


@relaxed
@given(plain_values)
def test_every_strict_prefix_of_a_payload_is_refused(value: Any) -> None:
    # Each value says where it ends, so no prefix is itself a payload.
    data = encode_value(value)
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode_value(data[:cut])


def test_integers_of_any_size_and_floats_keep_their_bits() -> None:
    for n in [0, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 10**40, -(10**40)]:
        assert_same(decode_value(encode_value(n)), n)
    for x in [0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324]:
        assert_same(decode_value(encode_value(x)), x)


def test_small_values_are_compact() -> None:
    assert len(encode_value(None)) == 2
    assert len(encode_value(7)) == 10
    assert len(encode_value("abc")) == 6
    assert len(encode_value([1, 2])) == 3 + 2 * 9


# ---------------------------------------------------------------- numpy


array_dtypes = (
    hnp.boolean_dtypes()
    | hnp.integer_dtypes(endianness="=")
    | hnp.unsigned_integer_dtypes(endianness="=")
    | hnp.floating_dtypes(endianness="=")
    | hnp.complex_number_dtypes(endianness="=")
    | hnp.datetime64_dtypes(endianness="=")
    | hnp.timedelta64_dtypes(endianness="=")
    | hnp.byte_string_dtypes(endianness="=", min_len=1)
    | hnp.unicode_string_dtypes(endianness="=", min_len=1)
    | hnp.integer_dtypes(endianness=">")
    | hnp.floating_dtypes(endianness=">")
)


@relaxed
@given(hnp.arrays(array_dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)))
def test_numpy_arrays_round_trip_with_dtype_and_shape(arr: np.ndarray) -> None:
    back = decode_value(encode_value(arr))
    assert_same(back, arr)
    assert back.flags.writeable


@relaxed
@given(hnp.arrays(hnp.floating_dtypes(), hnp.array_shapes(min_dims=2, max_dims=3)))
def test_non_contiguous_arrays_round_trip(arr: np.ndarray) -> None:
    view = arr.T[::-1]
    assert_same(decode_value(encode_value(view)), np.ascontiguousarray(view))


@relaxed
@given(hnp.from_dtype(np.dtype("float32")) | hnp.from_dtype(np.dtype("int16")) | hnp.from_dtype(np.dtype("bool")))
def test_numpy_scalars_stay_numpy_scalars(x: np.generic) -> None:
    assert_same(decode_value(encode_value(x)), x)


def test_object_arrays_are_refused_with_the_fix() -> None:
    with pytest.raises(EncodeError) as info:
        encode_value({"scores": np.array([{"a": 1}], dtype=object)})
    assert str(info.value) == (
        "cannot send a value of type numpy.ndarray at value['scores'] over the wire: its dtype is "
        "object, and the codec sends only numeric, bool, datetime, bytes and str dtypes, as raw "
        "bytes. Fix: convert it (arr.astype(float), arr.astype(str)) or send arr.tolist()."
    )


@pytest.mark.parametrize(
    ("dtype", "raw", "message"),
    [
        ("|O8", b"\x00" * 8, "numpy dtype '|O8' is not one the codec sends"),
        ("|V8", b"\x00" * 8, "numpy dtype '|V8' is not one the codec sends"),
        ("|b1", b"\x02", "a numpy bool array holds bytes other than 0 and 1"),
        ("<U1", b"\xff\xff\xff\xff", "a numpy str array holds a code point past U+10FFFF"),
    ],
)
def test_hostile_numpy_payloads_are_refused(dtype: str, raw: bytes, message: str) -> None:
    name = dtype.encode()
    data = b"\x01a" + bytes([len(name)]) + name + b"\x01\x01" + raw
    with pytest.raises(DecodeError, match=re.escape(message)):
        decode_value(data)


def test_an_empty_array_whose_shape_overflows_is_refused() -> None:
    # Each dimension is small, but their product (next to a 0) is past what numpy can index.
    dims = b"\x19" * 20 + b"\x00"  # 25**20 > 2**63
    data = b"\x01a\x03<f8" + bytes([len(dims)]) + dims
    with pytest.raises(DecodeError, match=re.escape("numpy shape (25, 25,")):
        decode_value(data)


# ---------------------------------------------------------------- pydantic, protobuf, enums


class Claim(BaseModel):
    text: str
    score: float = 0.0
    tags: list[str] = []


class Verdict(BaseModel):
    claim: Claim
    ok: bool


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


claims = st.builds(Claim, text=st.text(), score=st.floats(allow_nan=False, allow_infinity=False), tags=st.lists(st.text()))


@relaxed
@given(claims)
def test_pydantic_model_comes_back_as_the_annotated_model(claim: Claim) -> None:
    assert decode_value(encode_value(claim), Claim) == claim
    # Without an annotation the receiver gets the JSON's dict, never a class named by the sender.
    assert decode_value(encode_value(claim)) == claim.model_dump(mode="json")


@relaxed
@given(st.lists(claims, max_size=3), st.booleans())
def test_annotations_are_followed_into_containers(items: list[Claim], ok: bool) -> None:
    value = {"claims": items, "pairs": (items[:1], Level.HIGH), "color": Color.BLUE, "v": Verdict(claim=Claim(text="x"), ok=ok)}
    hint = dict[str, Any]
    assert decode_value(encode_value(items), list[Claim]) == items
    assert decode_value(encode_value(items), Optional[list[Claim]]) == items  # noqa: UP045  # the old spelling
    assert decode_value(encode_value(items), Annotated[list[Claim], "doc"]) == items
    assert decode_value(encode_value(tuple(items)), tuple[Claim, ...]) == tuple(items)
    assert decode_value(encode_value((items, Level.HIGH)), tuple[list[Claim], Level]) == (items, Level.HIGH)
    assert decode_value(encode_value(value["v"]), Verdict | None) == value["v"]
    assert decode_value(encode_value({"a": Color.RED}), dict[str, Color]) == {"a": Color.RED}
    assert decode_value(encode_value(value), hint)["color"] == "blue"  # no hint for it: the value


def test_a_union_of_models_takes_the_first_that_validates() -> None:
    verdict = Verdict(claim=Claim(text="a"), ok=True)
    assert decode_value(encode_value(verdict), Claim | Verdict) == verdict


def test_json_that_does_not_fit_the_annotated_model_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="does not validate as the annotated model: Verdict: "):
        decode_value(encode_value(Claim(text="a")), Verdict)


def test_unserialisable_model_names_the_model_and_the_cause() -> None:
    class Holder(BaseModel, arbitrary_types_allowed=True):
        thing: object

    with pytest.raises(EncodeError, match=r"cannot send a value of type .*Holder over the wire: pydantic cannot serialise it to JSON"):
        encode_value(Holder(thing=object()))


def test_protobuf_messages_round_trip_with_or_without_annotation() -> None:
    env = wire_pb2.Envelope(ancestry=[3, 1], status=2, error=wire_pb2.ErrorBody(message="boom"))
    assert decode_value(encode_value(env), wire_pb2.Envelope) == env
    # Self-describing by full name, among the message types this process has loaded.
    back = decode_value(encode_value([env]))
    assert back == [env] and type(back[0]) is wire_pb2.Envelope


def test_unknown_protobuf_type_names_the_fix() -> None:
    name = b"nowhere.Missing"
    data = b"\x01P" + bytes([len(name)]) + name + b"\x00"
    with pytest.raises(DecodeError, match="no such message type is loaded in this process: annotate the parameter"):
        decode_value(data)


def test_enums_travel_as_their_value() -> None:
    assert decode_value(encode_value(Color.RED)) == "red"
    assert decode_value(encode_value(Color.RED), Color) is Color.RED
    assert decode_value(encode_value(Level.LOW), Level) is Level.LOW
    assert decode_value(encode_value("green"), Color) == "green"  # not a member: left alone


# ---------------------------------------------------------------- refusals and their messages


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Shape:
    name: str
    points: list[Point]
    by_name: dict[str, Point]
    center: Optional[Point] = None
    color: Optional[Color] = None
    claim: Optional[Claim] = None
    area: float = dataclasses.field(init=False, default=0.0)


class Box:
    def __init__(self, v: int) -> None:
        self.v = v


points = st.builds(Point, st.integers(), st.integers())
shapes = st.builds(
    Shape,
    st.text(),
    st.lists(points, max_size=4),
    st.dictionaries(st.text(max_size=5), points, max_size=3),
    st.none() | points,
    st.none() | st.sampled_from(Color),
    st.none() | st.builds(Claim, text=st.text(max_size=10),
              # Finite: pydantic's JSON writes inf as null (docs/runtime.md, values between stages).
              score=st.floats(allow_nan=False, allow_infinity=False), tags=st.lists(st.text(max_size=3), max_size=2)),
)


@relaxed
@given(shapes, st.booleans())
def test_dataclasses_come_back_as_the_same_class_with_or_without_annotation(shape: Shape, annotated: bool) -> None:
    got = decode_value(encode_value([shape]), list[Shape] if annotated else None)
    assert got == [shape]
    assert type(got[0]) is Shape and all(type(p) is Point for p in got[0].points)


def test_frozen_dataclasses_and_init_false_fields_keep_their_state() -> None:
    shape = Shape("s", [Point(1, 2)], {})
    shape.area = 2.5  # set after __init__, which a rebuild must not rerun
    got = decode_value(encode_value(shape))
    assert got.area == 2.5 and got.points[0] == Point(1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.points[0].x = 3  # type: ignore[misc]


def test_attrs_classes_round_trip() -> None:
    attrs = pytest.importorskip("attrs")

    @attrs.frozen
    class Span:
        start: int
        _label: str = "x"

    global _Span
    _Span = Span
    Span.__qualname__ = "_Span"
    got = decode_value(encode_value({"s": Span(1, "y")}))
    assert got == {"s": Span(1, "y")} and type(got["s"]) is Span


_Span: Any = None


def test_a_dataclass_that_is_not_loaded_here_decodes_to_the_dict_of_its_fields() -> None:
    name = f"{__name__}:Point".encode()
    data = encode_value(Point(1, 2)).replace(encode_uvarint(len(name)) + name, b"\x0dnowhere:Point")
    assert decode_value(data) == {"x": 1, "y": 2}


def test_a_dataclass_whose_fields_differ_here_is_a_decode_error() -> None:
    @dataclasses.dataclass
    class Point:  # same qualified name in a test, one field fewer
        x: int

    Point.__qualname__ = "Point"
    with pytest.raises(DecodeError, match=r"has the fields \['x', 'y'\].*run the same version"):
        decode_value(encode_value(globals()["Point"](1, 2)), Point)


def test_a_plain_object_is_refused_with_its_type_its_place_and_the_fix() -> None:
    with pytest.raises(EncodeError) as info:
        encode_value({"hits": [1, Box(2)]})
    assert str(info.value) == (
        f"cannot send a value of type {__name__}.Box at value['hits'][1] over the wire: the codec "
        "sends None, bool, int, float, str, bytes, bytearray, list, tuple, dict, set, frozenset, "
        "numpy arrays and scalars, dataclasses, attrs classes, pydantic models and protobuf "
        "messages. Fix: make Box a dataclass (@dataclasses.dataclass) or a pydantic model, whose "
        "instances keep their type across the wire, or convert it to one of those before the stage "
        "returns it; or, for replicas on local UNIX sockets only, serve with `altoflow serve "
        "--allow-pickle` to pickle it."
    )
    assert isinstance(info.value, TypeError) and isinstance(info.value, CodecError)


def test_a_plain_object_inside_a_dataclass_is_named_by_its_field() -> None:
    with pytest.raises(EncodeError, match=r"Box at value\.points\[0\] over the wire"):
        encode_value(Shape("s", [Box(1)], {}))  # type: ignore[list-item]


def test_over_tcp_the_message_does_not_offer_pickle() -> None:
    with pytest.raises(EncodeError) as info:
        Codec(transport="tcp").encode(object())
    assert str(info.value).endswith("or convert it to one of those before the stage returns it.")
    assert "pickle" not in str(info.value)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_values_nested_past_the_limit_are_refused_both_ways_never_a_recursion_error(depth: int) -> None:
    deep: Any = []
    for _ in range(depth):
        deep = [deep]
    with pytest.raises(EncodeError, match=f"nested more than {MAX_DEPTH} levels deep"):
        encode_value(deep)
    hostile = bytes((1,)) + b"l\x01" * depth + b"l\x00"
    with pytest.raises(DecodeError, match=f"nested more than {MAX_DEPTH} levels deep"):
        decode_value(hostile)
    chain: Any = None
    for _ in range(depth):
        chain = Shape("s", [], {}, center=None, claim=None) if chain is None else dataclasses.replace(chain, points=[chain])  # type: ignore[list-item]
        if _ > MAX_DEPTH + 1:
            break
    with pytest.raises(EncodeError, match="nested more than"):
        encode_value(chain)


def test_values_at_the_limit_round_trip() -> None:
    deep: Any = []
    for _ in range(MAX_DEPTH - 1):
        deep = [deep]
    assert decode_value(encode_value(deep)) == deep


def test_a_value_that_contains_itself_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EncodeError, match=f"it is nested more than {MAX_DEPTH} levels deep"):
        encode_value(loop)
    with pytest.raises(EncodeError, match="nested more than"):
        shape = Shape("s", [], {})
        shape.points.append(shape)  # type: ignore[arg-type]
        encode_value(shape)


def test_pickle_is_opt_in_on_both_ends() -> None:
    local = Codec(allow_pickle=True)
    data = local.encode({"p": Fraction(1, 3)})
    assert local.decode(data) == {"p": Fraction(1, 3)}
    with pytest.raises(DecodeError) as info:
        decode_value(data)
    assert str(info.value) == (
        "the payload holds a pickled fractions.Fraction value, and this codec refuses to unpickle: "
        "unpickling runs code chosen by the sender. Send a dataclass or a pydantic model instead, "
        "or, for replicas on local UNIX sockets only, serve with `altoflow serve --allow-pickle` to "
        "pickle it"
    )
    assert local.encode(Point(1, 2)) == encode_value(Point(1, 2))  # a dataclass is never pickled


def test_pickle_is_never_allowed_over_tcp() -> None:
    with pytest.raises(ValueError, match="allow_pickle=True is refused for transport='tcp'"):
        Codec(allow_pickle=True, transport="tcp")


def test_plain_values_never_use_pickle_even_when_allowed() -> None:
    value = {"a": [1, 2.5, "x"], "n": np.arange(3)}
    assert Codec(allow_pickle=True).encode(value) == encode_value(value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty payload"),
        (b"\x02N", "payload codec version 2, this process reads version 1"),
        (b"\x01NN", "1 stray bytes after the value"),
        (b"\x01q", "unknown value tag 0x71"),
        (b"\x01s\x05ab", "payload is truncated"),
        (b"\x01s\x02\xff\xfe", "a string is not valid UTF-8"),
        (b"\x01m\x01l\x00N", "a dict key of type list is unhashable"),
        (b"\x01" + b"l\x01" * (MAX_DEPTH + 1) + b"N", f"payload is nested more than {MAX_DEPTH} levels deep"),
        (b"\x01s\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "a length is longer than 10 bytes"),
    ],
)
def test_bad_payloads_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=re.escape(message)):
        decode_value(data)


# ---------------------------------------------------------------- fuzz: decode or DecodeError


hints = st.sampled_from([None, list[Claim], dict[str, Color], Verdict | None, tuple[int, Level], wire_pb2.Envelope])


@relaxed
@given(st.binary(max_size=300), hints)
def test_random_bytes_decode_or_raise_decode_error(data: bytes, hint: Any) -> None:
    try:
        decode_value(b"\x01" + data, hint)
    except DecodeError:
        pass


mixed_values = st.recursive(
    plain_values | claims | hnp.arrays(array_dtypes, hnp.array_shapes(min_dims=0, max_dims=2, max_side=3)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)


@relaxed
@given(mixed_values, st.data(), hints)
def test_corrupted_payloads_decode_or_raise_decode_error(value: Any, data: st.DataObject, hint: Any) -> None:
    payload = bytearray(encode_value(value))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(payload)))
        action = data.draw(st.sampled_from(["set", "insert", "delete"]))
        if action == "set" and pos < len(payload):
            payload[pos] = data.draw(st.integers(0, 255))
        elif action == "insert":
            payload[pos:pos] = data.draw(st.binary(min_size=1, max_size=6))
        else:
            del payload[pos : pos + data.draw(st.integers(1, 6))]
    try:
        decode_value(bytes(payload), hint)
    except DecodeError:
        pass


# ---------------------------------------------------------------- the varints shared with frames


@given(st.integers(0, 2**70 - 1), st.binary(max_size=3), st.binary(max_size=3))
def test_varints_round_trip_wherever_they_sit(n: int, before: bytes, after: bytes) -> None:
    data = before + encode_uvarint(n) + after
    assert read_uvarint(data, len(before), len(data)) == (n, len(data) - len(after))
    # Protobuf writes the same bytes for the values it holds.
    if n < 2**32:
        assert wire_pb2.Envelope(ancestry=[n]).SerializeToString()[2:] == encode_uvarint(n)
    assert pack_uvarints([n, 1, n], 2**70) == encode_uvarint(n) + b"\x01" + encode_uvarint(n)
    assert pack_uvarints([n], n - 1) is None and pack_uvarints([1, -1], 2**70) is None


@given(st.integers(2**7, 2**70 - 1))
def test_a_cut_varint_reads_as_none(n: int) -> None:
    data = encode_uvarint(n)
    for stop in range(len(data)):
        assert read_uvarint(data, 0, stop) is None
    assert read_uvarint(data + b"\x00", 0, len(data) - 1) is None  # `stop`, not the buffer's end, counts


def test_varints_are_at_most_ten_bytes_and_not_negative() -> None:
    assert read_uvarint(b"\xff" * 9 + b"\x01", 0, 10) == (2**64 - 1, 10)
    assert read_uvarint(b"\xff" * MAX_VARINT_SIZE + b"\x01", 0, MAX_VARINT_SIZE + 1) is None
    with pytest.raises(ValueError, match="a varint cannot hold the negative number -1"):
        encode_uvarint(-1)


class _Tone(enum.Enum):
    LOW = "low"


def test_an_unhashable_annotation_still_brings_the_enum_member_back():
    # Hints are looked up in a cache; one whose metadata cannot be hashed is worked out anew.
    codec = Codec()
    hint = Annotated[_Tone, {"metadata": ["unhashable"]}]
    assert codec.decode(codec.encode("low"), hint) is _Tone.LOW
    assert codec.decode(codec.encode(["low"]), list[hint]) == [_Tone.LOW]
