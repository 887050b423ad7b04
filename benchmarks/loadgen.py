"""Open-loop load: Poisson arrivals at a rate for a time, against ``POST /v1/run`` or a callable.

    python benchmarks/loadgen.py http://127.0.0.1:8000 --rate 15 --duration 60 \\
        --input '{"question": "Who built Tower Bridge?"}' --json out.json
    python benchmarks/loadgen.py http://127.0.0.1:8000 --rate 15 --duration 60 \\
        --inputs questions.jsonl             # one JSON object a line, used in turn
    python benchmarks/loadgen.py app.py:target --rate 5 --duration 10   # an async callable

Arrivals are a Poisson process: exponential gaps with mean ``1/rate``, drawn from a seeded
random source, so a run's schedule is the same every time. The load is open-loop: a request is
sent at its arrival time whether or not earlier ones have finished. At most ``--max-in-flight``
run at once; an arrival beyond that is not sent and is counted as dropped (a queue here would
hide the overload it measures).

A target is the base URL of an altoflow server (each request is ``POST {url}/v1/run`` with the
fields as its JSON body, answered in NDJSON, one event a line), or any async callable that takes
the fields as a dict and yields events (mappings with a ``"type"``, such as altoflow's
``Event``). Per request it records the arrival, the latency to the first ``output`` event and
to the end of the stream (both from the scheduled arrival, so that a late send counts against
the system, not in its favour), the number of outputs, and ok or the error: an ``error`` event,
an HTTP status other than 200, a stream that breaks, or ``--timeout``.

The summary: latency p50/p99, first-output p50/p99, achieved throughput (requests completed
ok per second of wall time, from the first arrival until the last request ends), errors and
drops. A progress line goes to stderr while it runs (``--quiet`` turns it off); ``--json``
writes the summary and every request's record.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import platform
import random
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio
import httpx

#: A target: the request's fields in, its events out.
Target = Callable[[dict[str, Any]], AsyncIterator[Mapping[str, Any]]]


# -- the schedule and the numbers (pure) -----------------------------------------------------


def arrivals(rate: float, duration: float, seed: int = 0) -> list[float]:
    """Arrival times in ``[0, duration)`` of a Poisson process of ``rate`` per second."""
    if not rate > 0 or not math.isfinite(rate):
        raise ValueError(f"the rate must be a finite number > 0 requests/s, got {rate!r}")
    if not duration > 0 or not math.isfinite(duration):
        raise ValueError(f"the duration must be a finite number > 0 seconds, got {duration!r}")
    rng = random.Random(seed)
    times, t = [], rng.expovariate(rate)
    while t < duration:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100), interpolating between ranks; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class RequestRecord:
    """One request. Times are seconds; ``scheduled_s`` and ``sent_s`` from the run's start,
    ``first_output_s`` and ``last_s`` from ``scheduled_s``."""

    index: int
    scheduled_s: float
    sent_s: float | None = None
    first_output_s: float | None = None
    last_s: float | None = None
    outputs: int = 0
    ok: bool = False
    error: str | None = None


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "mean": sum(values) / len(values) if values else None,
        "max": max(values) if values else None,
    }


def summarize(records: Sequence[RequestRecord], dropped: int, wall_s: float) -> dict[str, Any]:
    """The summary of a run: counts, latency and first-output spreads, achieved throughput."""
    done = [r for r in records if r.ok]
    errors = [r for r in records if r.last_s is not None and not r.ok]
    return {
        "sent": len(records),
        "completed": len(done),
        "errors": len(errors),
        "dropped": dropped,
        "unfinished": len(records) - len(done) - len(errors),
        "wall_s": wall_s,
        "throughput_rps": len(done) / wall_s if wall_s > 0 else None,
        "latency_s": _spread([r.last_s for r in done if r.last_s is not None]),
        "first_output_s": _spread([r.first_output_s for r in done if r.first_output_s is not None]),
        "error_kinds": _count(r.error or "?" for r in errors),
    }


def _count(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        key = item.split(":", 1)[0][:80]
        counts[key] = counts.get(key, 0) + 1
    return counts


def render_progress(
    elapsed: float, duration: float, sent: int, done: int, errors: int, dropped: int,
    in_flight: int, width: int = 24,
) -> str:
    """One progress line: a bar of the arrival window, then the counts."""
    filled = min(width, int(width * elapsed / duration)) if duration > 0 else width
    bar = "#" * filled + "." * (width - filled)
    return (
        f"[{bar}] {min(elapsed, duration):6.1f}/{duration:.0f} s  sent {sent}  done {done}  "
        f"errors {errors}  dropped {dropped}  in flight {in_flight}"
    )


# -- targets ---------------------------------------------------------------------------------


class TargetError(Exception):
    """A request that the target answered with something other than its events."""


def http_target(base_url: str, client: httpx.AsyncClient, *, partials: bool = True) -> Target:
    """``POST {base_url}/v1/run`` with the fields as JSON; yields the NDJSON events.

    The stream must end with a ``done`` or an ``error`` event; one that stops before is an
    error (the server went away mid-request). ``partials=False`` asks an altoflow server for
    no ``partial`` events (``?partials=false``).
    """
    url = base_url.rstrip("/") + ("/v1/run" if partials else "/v1/run?partials=false")

    async def run(fields: dict[str, Any]) -> AsyncIterator[Mapping[str, Any]]:
        async with client.stream("POST", url, json=fields) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                raise TargetError(f"HTTP {response.status_code}: {body[:200]}")
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                yield event
                if event.get("type") in ("done", "error"):
                    return
        raise TargetError("the stream ended before a done or error event")

    return run


def load_callable(spec: str) -> Target:
    """``file.py:name`` or ``package.module:name``: the async callable to drive."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise SystemExit(
            f"loadgen: a callable target is FILE.py:NAME or MODULE:NAME, not {spec!r} "
            "(or give an http:// URL)"
        )
    if where.endswith(".py"):
        path = Path(where).resolve()
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise SystemExit(f"loadgen: cannot load {where}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    try:
        return getattr(module, name)
    except AttributeError:
        raise SystemExit(f"loadgen: {where} has no {name!r}") from None


# -- the run (the clock and the tasks) --------------------------------------------------------


def _error_text(event: Mapping[str, Any]) -> str:
    try:
        return str(event["error"])
    except KeyError:
        return "(no message)"


@dataclass
class LoadRun:
    """What a run did: its settings, every request sent, and the summary."""

    rate: float
    duration_s: float
    seed: int
    max_in_flight: int
    records: list[RequestRecord] = field(default_factory=list)
    dropped: int = 0
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return summarize(self.records, self.dropped, self.wall_s)

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": "loadgen",
            "rate": self.rate,
            "duration_s": self.duration_s,
            "seed": self.seed,
            "max_in_flight": self.max_in_flight,
            "summary": self.summary(),
            "requests": [asdict(r) for r in self.records],
        }


async def run_load(
    target: Target,
    inputs: Sequence[dict[str, Any]],
    *,
    rate: float,
    duration: float,
    seed: int = 0,
    max_in_flight: int = 1000,
    timeout: float = 300.0,
    progress: TextIO | None = None,
    progress_every: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> LoadRun:
    """Drive ``target`` with Poisson arrivals; request ``i`` gets ``inputs[i % len(inputs)]``."""
    if not inputs:
        raise ValueError("give at least one request's fields (inputs is empty)")
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
    schedule = arrivals(rate, duration, seed)
    run = LoadRun(rate, duration, seed, max_in_flight)
    in_flight = 0
    start = clock()

    async def one(record: RequestRecord, fields: dict[str, Any]) -> None:
        nonlocal in_flight
        record.sent_s = clock() - start
        due = start + record.scheduled_s
        try:
            with anyio.fail_after(timeout):
                events = target(dict(fields))
                try:
                    async for event in events:
                        kind = event["type"]
                        if kind == "output":
                            record.outputs += 1
                            if record.first_output_s is None:
                                record.first_output_s = clock() - due
                        elif kind == "error":
                            record.error = f"error event: {_error_text(event)}"
                            break
                finally:
                    aclose = getattr(events, "aclose", None)
                    if aclose is not None:
                        await aclose()
            record.ok = record.error is None
        except TimeoutError:
            record.error = f"timeout: no end after {timeout} s"
        except Exception as exc:  # noqa: BLE001 - a failed request is a result, not a crash
            record.error = f"{type(exc).__name__}: {exc}"
        finally:
            record.last_s = clock() - due
            in_flight -= 1

    def line() -> str:
        finished = [r for r in run.records if r.last_s is not None]
        return render_progress(
            clock() - start, duration, len(run.records), sum(r.ok for r in finished),
            sum(not r.ok for r in finished), run.dropped, in_flight,
        )

    async def report(stop: anyio.Event) -> None:
        assert progress is not None
        tty = progress.isatty()
        while not stop.is_set():
            with anyio.move_on_after(progress_every):
                await stop.wait()
            progress.write(("\r" if tty else "") + line() + ("" if tty else "\n"))
            progress.flush()
        if tty:
            progress.write("\n")

    stop = anyio.Event()
    async with anyio.create_task_group() as outer:
        if progress is not None:
            outer.start_soon(report, stop)
        async with anyio.create_task_group() as tg:
            for index, at in enumerate(schedule):
                await anyio.sleep(max(0.0, start + at - clock()))
                if in_flight >= max_in_flight:
                    run.dropped += 1
                    continue
                record = RequestRecord(index=index, scheduled_s=at)
                run.records.append(record)
                in_flight += 1
                tg.start_soon(one, record, inputs[index % len(inputs)])
        run.wall_s = clock() - start - (schedule[0] if schedule else 0.0)
        stop.set()
    return run


# -- the command line ------------------------------------------------------------------------


def _inputs(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.inputs:
        rows = [json.loads(line) for line in Path(args.inputs).read_text().splitlines() if line.strip()]
    else:
        rows = [json.loads(args.input)]
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise SystemExit(f"loadgen: request fields must be a JSON object; input {i} is {row!r}")
    return rows


def _table(summary: dict[str, Any]) -> str:
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x * 1000:.0f} ms"

    lat, first = summary["latency_s"], summary["first_output_s"]
    rps = summary["throughput_rps"]
    return "\n".join([
        f"sent {summary['sent']}  completed {summary['completed']}  errors {summary['errors']}  "
        f"dropped {summary['dropped']}  unfinished {summary['unfinished']}",
        f"throughput {'-' if rps is None else f'{rps:.2f}'} requests/s over {summary['wall_s']:.1f} s",
        f"latency       p50 {ms(lat['p50'])}  p99 {ms(lat['p99'])}  max {ms(lat['max'])}",
        f"first output  p50 {ms(first['p50'])}  p99 {ms(first['p99'])}",
        *(f"  error: {kind} x{n}" for kind, n in summary["error_kinds"].items()),
    ])


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    inputs = _inputs(args)
    progress = None if args.quiet else sys.stderr
    if args.target.startswith(("http://", "https://")):
        limits = httpx.Limits(max_connections=args.max_in_flight, max_keepalive_connections=64)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(args.timeout)) as client:
            run = await run_load(
                http_target(args.target, client), inputs, rate=args.rate,
                duration=args.duration, seed=args.seed, max_in_flight=args.max_in_flight,
                timeout=args.timeout, progress=progress,
            )
    else:
        run = await run_load(
            load_callable(args.target), inputs, rate=args.rate, duration=args.duration,
            seed=args.seed, max_in_flight=args.max_in_flight, timeout=args.timeout,
            progress=progress,
        )
    record = run.to_json()
    record["target"] = args.target
    record["command"] = "python benchmarks/loadgen.py " + " ".join(sys.argv[1:])
    record["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    record["machine"] = {"python": platform.python_version(), "platform": platform.platform()}
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="http(s)://HOST:PORT of an altoflow server, or FILE.py:NAME "
                                       "/ MODULE:NAME of an async callable yielding events")
    parser.add_argument("--rate", type=float, required=True, help="arrivals per second")
    parser.add_argument("--duration", type=float, required=True,
                        help="seconds during which requests arrive")
    parser.add_argument("--input", default="{}", help="the request's fields, a JSON object")
    parser.add_argument("--inputs", help="a file of JSON objects, one a line, used in turn")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrival times")
    parser.add_argument("--max-in-flight", type=int, default=1000,
                        help="requests running at once; arrivals beyond it are dropped")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds a request may take before it counts as an error")
    parser.add_argument("--json", dest="json_out", help="write the summary and every request here")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    args = parser.parse_args(argv)
    try:
        record = anyio.run(_main, args)
    except ValueError as exc:
        parser.error(str(exc))
    print(_table(record["summary"]))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
