"""What OpenTelemetry tracing costs when it is on (``altoflow serve --otel``), and that the DATA
frame of a traced request costs the wire next to nothing.

Two measurements, each interleaved off/on (``benchmarks/_stats.py``), since this machine class
is shared and noisy:

- ``run``: ``altoflow.run`` of a request that fans out N items through two async maps into a
  sum (3N + 2 invocations), with tracing off, and on with the SDK's ``TracerProvider`` and a
  ``BatchSpanProcessor`` whose exporter drops the spans (the cost of making and ending them,
  not of a network). Reported: seconds per request and the extra microseconds per invocation.
- ``frame``: encoding a DATA frame (``encode_item``) and decoding a batch of them
  (``FrameReader.feed``), without and with a 25-byte trace context, in microseconds per frame.

What tracing costs when it is off (the router's own per-item work, before and after tracing
existed) is measured with ``benchmarks/router.py`` on the two versions of the code, see
docs/runtime.md, "What tracing costs". Needs the ``otel`` extra.

    python benchmarks/tracing.py                  # 2000 items, 5 repetitions
    python benchmarks/tracing.py --quick --out X  # a tiny setting, for the test suite
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path

import altoflow as af
import altoflow.tracing
from altoflow import ops, stage
from altoflow.wire.frame import Kind, encode_item
from altoflow.wire.stream import FrameReader

import _stats  # benchmarks/_stats.py, next to this script

RESULTS = Path(__file__).resolve().parent / "results" / "tracing.json"
TRACE = bytes(range(25))


@stage(fanout="item")
async def items(n: int):
    for i in range(n):
        yield i


@stage
async def double(items: int) -> int:
    return 2 * items


@stage
async def shift(double: int) -> int:
    return double + 1


@stage(aggregate=ops.sum)
async def total(shift: int) -> int:
    return shift


PIPELINE = af.Pipeline([items, double, shift, total], name="tracing-bench")


def _provider():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return provider


def run_request(variant: str, n: int, provider) -> float:  # type: ignore[no-untyped-def]
    if variant == "on":
        altoflow.tracing.enable(provider)
    try:
        t0 = timeit.default_timer()
        result = af.run(PIPELINE, n=n)
        seconds = timeit.default_timer() - t0
    finally:
        altoflow.tracing.disable()
    assert result["total"] == n * n, "a broken run is not timed"  # sum of 2i+1 over i < n
    return seconds


def frame_costs(number: int) -> dict[str, float]:
    """Microseconds per DATA frame, the best of 5 timings of ``number`` frames."""
    batch = {t: b"".join(encode_item(Kind.DATA, 1, 7, (3, i % 100), b"x" * 40, trace=t)
                         for i in range(1000)) for t in (b"", TRACE)}
    out = {}
    for name, trace in (("plain", b""), ("traced", TRACE)):
        enc = min(timeit.repeat(lambda: encode_item(Kind.DATA, 1, 7, (3, 9), b"x" * 40, trace=trace),
                                number=number, repeat=5)) / number
        dec = min(timeit.repeat(lambda: FrameReader().feed(batch[trace]), number=max(1, number // 1000),
                                repeat=5)) / (max(1, number // 1000) * 1000)
        out[f"encode_{name}_us"] = enc * 1e6
        out[f"decode_{name}_us"] = dec * 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny setting, for the test suite")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (default 5; --quick: 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON results")
    args = parser.parse_args(argv)
    n = 50 if args.quick else 2000
    repeat = args.repeat or (2 if args.quick else 5)
    provider = _provider()
    run_request("on", 10, provider)  # warm up: imports, the first spans
    runs = _stats.interleaved(repeat, ["off", "on"], lambda v: run_request(v, n, provider))
    provider.shutdown()
    invocations = 3 * n + 2
    off, on = _stats.summary(runs["off"]), _stats.summary(runs["on"])
    extra_us = (on["median"] - off["median"]) / invocations * 1e6
    frames = frame_costs(2000 if args.quick else 200_000)
    record = {"benchmark": "tracing", "items": n, "invocations": invocations, "repeat": repeat,
              "run_seconds": runs, "run_summary": {"off": off, "on": on},
              "extra_us_per_invocation": extra_us, "frames": frames,
              "python": sys.version.split()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"altoflow.run, {n} items ({invocations} invocations), median (min-max) of {repeat}:")
    for v, s in (("off", off), ("on", on)):
        print(f"  tracing {v:<3}  {s['median'] * 1e3:8.1f} ms  ({s['min'] * 1e3:.1f}-{s['max'] * 1e3:.1f})")
    print(f"  tracing on costs {extra_us:.1f} us per invocation (a stage span, and the request's)")
    print("DATA frame, best of 5, us per frame:")
    for name in ("plain", "traced"):
        print(f"  {name:<7} encode {frames[f'encode_{name}_us']:.2f}  decode {frames[f'decode_{name}_us']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
