"""Micro-benchmark of the wire protocol: frames encoded and decoded per second, header peek cost.

    python benchmarks/frames.py            # full run, about a minute
    python benchmarks/frames.py --quick    # tiny setting, what the test suite runs

Prints a table and writes benchmarks/results/frames.json. No sockets: this is the CPU cost per
frame of the altoflow.wire package (frames, streams, payload codec), the part of a router hop or
a worker step that it owns. Cases
run interleaved (A B C ... A B C ...) so that the host's slow spells hit all of them alike, and
each row reports the median and min-max over the repetitions (higher is better for */s rows,
lower for ns rows). The garbage collector is off while a sample is timed, as in timeit.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from google.protobuf import __version__ as protobuf_version
from google.protobuf.internal import api_implementation

from altoflow.wire import wire_pb2
from altoflow.wire.codec import decode_value, encode_value
from altoflow.wire.frame import HEADER_SIZE, ErrorBody, Kind, encode_frame, encode_item, pack_header, peek_header
from altoflow.wire.stream import FrameReader, FrameWriter

CHUNK = 64 * 1024  # a FrameWriter flush of a busy event-loop turn: the batched case
PAYLOAD = bytes(100)  # a small item: a short string or a few numbers, encoded


def data_frame(i: int) -> bytes:
    return encode_item(Kind.DATA, 2, i, (3, i % 7), PAYLOAD)


def chunked(stream: bytes, size: int) -> list[bytes]:
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def cases(n: int) -> dict[str, tuple[str, int, Callable[[], object]]]:
    """name -> (unit, operations per call, the call)."""
    frames = [data_frame(i) for i in range(n)]
    stream = b"".join(frames)
    batches = chunked(stream, CHUNK)
    offsets = list(itertools.accumulate((len(f) for f in frames[:-1]), initial=0))
    envelope = wire_pb2.Envelope(ancestry=[3, 1], part_sizes=[40, 60])
    envelope_bytes = envelope.SerializeToString()
    failure = ErrorBody("ValueError: the claim has no subject", "ValueError")
    small = {"text": "a claim that the model extracted from the response", "score": 0.75, "ids": [1, 2, 3, 4, 5]}
    small_payload = encode_value(small)
    embedding = np.random.default_rng(0).random(768, dtype=np.float32)
    embedding_payload = encode_value(embedding)

    def encode_data() -> None:
        for i in range(n):
            encode_frame(Kind.DATA, stage=2, request_id=i, ancestry=(3, 1), payload=PAYLOAD)

    def encode_failed_ack() -> None:
        for i in range(n):
            encode_frame(Kind.ACK, stage=2, request_id=i, ancestry=(3, 1), status=2, body=failure)

    def encode_item_data() -> None:
        for i in range(n):
            encode_item(Kind.DATA, 2, i, (3, 1), PAYLOAD)

    def encode_item_joined() -> None:
        for i in range(n):
            encode_item(Kind.DATA, 2, i, (3, 1), PAYLOAD, 0, (40, 60))

    def encode_item_ack() -> None:
        for i in range(n):
            encode_item(Kind.ACK, 2, i, (3, 1))

    def encode_ack() -> None:
        for i in range(n):
            encode_frame(Kind.ACK, stage=2, request_id=i, ancestry=(3, 1), status=1)

    def feed_batched() -> None:
        reader = FrameReader()
        for batch in batches:
            reader.feed(batch)

    def feed_raw_batched() -> None:
        reader = FrameReader()
        for batch in batches:
            reader.feed_raw(batch)

    def feed_raw_trickle() -> None:
        reader = FrameReader()
        for frame in frames:
            reader.feed_raw(frame)

    def forward() -> None:
        # A bare forwarder without sockets (router.py's baseline): split, new header, queue the
        # original rest, flush.
        reader = FrameReader()
        writer = FrameWriter()
        for batch in batches:
            for header, data in reader.feed_raw(batch):
                writer.write_nowait(
                    pack_header(
                        header.kind,
                        stage=5,
                        request_id=header.request_id,
                        envelope_size=header.envelope_size,
                        payload_size=header.payload_size,
                    ),
                    memoryview(data)[HEADER_SIZE:],
                )
            writer.flush()

    def peek() -> None:
        for offset in offsets:
            peek_header(stream, offset)

    def envelope_parse() -> None:
        for _ in range(n):
            wire_pb2.Envelope.FromString(envelope_bytes)

    def codec_small_roundtrip() -> None:
        for _ in range(n):
            decode_value(encode_value(small))

    def codec_small_decode() -> None:
        for _ in range(n):
            decode_value(small_payload)

    def codec_embedding_roundtrip() -> None:
        for _ in range(n):
            decode_value(encode_value(embedding))

    def codec_embedding_decode() -> None:
        for _ in range(n):
            decode_value(embedding_payload)

    return {
        "encode_frame DATA (2 indices, 100 B payload)": ("frames/s", n, encode_data),
        "encode_frame ACK (status)": ("frames/s", n, encode_ack),
        "encode_frame failed ACK (ErrorBody)": ("frames/s", n, encode_failed_ack),
        "encode_item DATA (2 indices, 100 B payload; the runtime's path)": ("frames/s", n, encode_item_data),
        "encode_item DATA, 2 joined parts": ("frames/s", n, encode_item_joined),
        "encode_item ACK": ("frames/s", n, encode_item_ack),
        "FrameReader.feed, 64 KiB chunks (decoded)": ("frames/s", n, feed_batched),
        "FrameReader.feed_raw, 64 KiB chunks (undecoded)": ("frames/s", n, feed_raw_batched),
        "FrameReader.feed_raw, one frame per feed": ("frames/s", n, feed_raw_trickle),
        "bare forward: feed_raw + pack_header + FrameWriter": ("frames/s", n, forward),
        "peek_header": ("ns/op", n, peek),
        "protobuf Envelope.FromString (baseline)": ("ns/op", n, envelope_parse),
        "codec small dict encode+decode": ("values/s", n, codec_small_roundtrip),
        "codec small dict decode": ("values/s", n, codec_small_decode),
        "codec float32[768] encode+decode": ("values/s", n, codec_embedding_roundtrip),
        "codec float32[768] decode": ("values/s", n, codec_embedding_decode),
    }


def sample(call: Callable[[], object]) -> int:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        call()
        return time.perf_counter_ns() - start
    finally:
        gc.enable()


def run(n: int, repeats: int) -> list[dict[str, object]]:
    table = cases(n)
    for _unit, _ops, call in table.values():
        call()  # warm-up: imports, caches, the allocator's first pages
    elapsed: dict[str, list[int]] = {name: [] for name in table}
    for _ in range(repeats):
        for name, (_unit, _ops, call) in table.items():
            elapsed[name].append(sample(call))
    rows = []
    for name, (unit, ops, _call) in table.items():
        if unit == "ns/op":
            values = [ns / ops for ns in elapsed[name]]
        else:
            values = [ops / (ns / 1e9) for ns in elapsed[name]]
        rows.append(
            {
                "name": name,
                "unit": unit,
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "samples": values,
                "operations_per_sample": ops,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny setting for the test suite")
    parser.add_argument("-n", type=int, default=None, help="operations per sample (default 20000)")
    parser.add_argument("--repeats", type=int, default=None, help="samples per case (default 7)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "frames.json")
    args = parser.parse_args(argv)
    n = args.n or (200 if args.quick else 20_000)
    repeats = args.repeats or (3 if args.quick else 7)

    rows = run(n, repeats)

    width = max(len(str(r["name"])) for r in rows)
    print(f"{'case':<{width}}  {'median':>12}  {'min':>12}  {'max':>12}  unit")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['median']:>12,.0f}  {r['min']:>12,.0f}  {r['max']:>12,.0f}  {r['unit']}")

    result = {
        "benchmark": "frames",
        "command": " ".join(["python", "benchmarks/frames.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "protobuf": f"{protobuf_version} ({api_implementation.Type()})",
            "numpy": np.__version__,
        },
        "operations_per_sample": n,
        "repeats": repeats,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
