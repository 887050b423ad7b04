"""Unsigned LEB128 varints, as protobuf writes them: the frame envelope's fast path and the
payload codec both read and write them with these functions.

A varint holds 7 bits per byte, low bits first; the high bit of a byte says that another
follows. At most 10 bytes are read (64 bits and a little more: callers check their own range).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MAX_VARINT_SIZE", "encode_uvarint", "pack_uvarints", "read_uvarint"]

MAX_VARINT_SIZE = 10

_ONE_BYTE = tuple(bytes((i,)) for i in range(0x80))


def encode_uvarint(n: int) -> bytes:
    """`n` as an unsigned varint; raises ValueError for a negative number."""
    if 0 <= n < 0x80:
        return _ONE_BYTE[n]
    if n < 0:
        raise ValueError(f"a varint cannot hold the negative number {n}")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def pack_uvarints(values: Sequence[int], top: int) -> bytes | None:
    """The values as varints back to back, as protobuf packs a repeated integer field; None if
    one is negative or above `top`.

    One loop rather than encode_uvarint per value: the per-item frames of a join pack their
    part sizes with it, and a call per value cost twice as much.
    """
    out = bytearray()
    for v in values:
        if not 0 <= v <= top:
            return None
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def read_uvarint(buf: bytes | bytearray | memoryview, pos: int, stop: int) -> tuple[int, int] | None:
    """The varint at `buf[pos:stop]` and the position after it.

    None if it does not end before `stop` (a truncated buffer) or runs past MAX_VARINT_SIZE
    bytes. It returns None rather than raising because each caller has its own error to raise,
    or none at all: the frame reader then hands the envelope to protobuf, the codec raises its
    DecodeError.
    """
    value = 0
    shift = 0
    while pos < stop and shift < 7 * MAX_VARINT_SIZE:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    return None
