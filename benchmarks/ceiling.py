"""The ceiling: how much load streaming can carry beyond waiting for whole outputs, on the ideal.

    python benchmarks/ceiling.py                       # writes results/ceiling.json
    python benchmarks/ceiling.py --quick --out X.json  # tiny setting, what the test suite runs

The end-to-end benchmark's capacity goal compares systems by the highest load each carries with
its p50 under a target. What streaming can add there is bounded by the ideal (the floor on a
virtual clock, ``benchmarks/floor/ideal.py``: only the simulated LM takes time, and under load
the requests contend for the profile's engines and nothing else). This sweeps that ideal, in
both modes (``streaming``: a streamed call's lines go on as they are written; ``barrier``: when
the call ends), over Poisson rates growing by ``--step`` from ``--min-rate``, for every
application under the ``paper`` profile at several engine batch limits (``--max-batch``, as
``altoflow sim-lm --max-batch``; ``0`` for the timing model's own 256): the smaller the batch,
the sooner the engines saturate and the more contention there is for early work to relieve.
A sweep stops at the first rate where both modes' median p50 is above the largest target, or at
``--max-rate``.

For each application, batch limit and target (a multiple of the streaming ideal's p50 for one
request alone, ``--targets``), the capacity of a mode is the highest median achieved throughput
among the rates whose median p50 is under the target, as the end-to-end report computes it for
live systems. The ratio of streaming's capacity to barrier's is the most that any streaming
system can show over a barrier one on that application and deployment: no orchestration cost
is in either. The ideal needs no real time, so the result does not depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "floor"))

import ideal  # noqa: E402
from e2e import APPS, inputs_of, machine  # noqa: E402

MODES = ("streaming", "barrier")
PROFILE = "paper"


def sweep(app: str, max_batch: int | None, alone_s: float,
          args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows of one application at one batch limit (``alone_s``: the streaming ideal of one
    request there): every mode, rate and seed."""
    inputs = inputs_of(app)
    top = max(args.targets) * alone_s
    rows: list[dict[str, Any]] = []
    rate = args.min_rate
    while rate <= args.max_rate * (1 + 1e-9):
        over = 0
        for mode in MODES:
            p50s = []
            for seed in range(args.seeds):
                summary = ideal.ideal_load(app, inputs, profile=PROFILE, rate=rate,
                                           duration=args.duration, seed=seed,
                                           barrier=mode == "barrier",
                                           max_batch=max_batch).summary()
                rows.append({"app": app, "max_batch": max_batch, "mode": mode,
                             "rate": round(rate, 4), "seed": seed,
                             "p50_s": summary["latency_s"]["p50"],
                             "first_output_p50_s": summary["first_output_s"]["p50"],
                             "throughput": summary["throughput_rps"],
                             "completed": summary["completed"]})
                p50s.append(summary["latency_s"]["p50"])
            over += statistics.median(p50s) > top
        firsts = rows[-2 * args.seeds :: args.seeds]  # each mode's first seed
        print(f"{app:15} batch {max_batch or 'default':>7} rate {rate:6.2f}: "
              + ", ".join(f"{r['mode']} p50 {r['p50_s']:.2f} s" for r in firsts), flush=True)
        if over == len(MODES):
            break
        rate *= args.step
    return rows


def _medians(rows: list[dict[str, Any]], app: str, max_batch: int | None,
             mode: str) -> list[tuple[float, float, float]]:
    """Per rate, in order: (rate, median p50, median achieved throughput) of one mode's runs."""
    out = []
    for rate in sorted({r["rate"] for r in rows}):
        runs = [r for r in rows if (r["app"], r["max_batch"], r["mode"], r["rate"])
                == (app, max_batch, mode, rate)]
        if runs:
            out.append((rate, statistics.median(r["p50_s"] for r in runs),
                        statistics.median(r["throughput"] for r in runs)))
    return out


def capacity(rows: list[dict[str, Any]], app: str, max_batch: int | None, mode: str,
             target: float) -> float:
    """The highest median achieved throughput among the rates whose median p50 is under target."""
    return max((thr for _, p50, thr in _medians(rows, app, max_batch, mode) if p50 < target),
               default=0.0)


def summarize(out: dict[str, Any]) -> list[dict[str, Any]]:
    """Per application and batch limit: the low-load ideals, saturation, and capacity per target."""
    summary = []
    for app in out["settings"]["apps"]:
        for max_batch in out["settings"]["max_batch"]:
            alone = {row["mode"]: row for row in out["alone"]
                     if (row["app"], row["max_batch"]) == (app, max_batch)}
            rows = [r for r in out["rows"] if (r["app"], r["max_batch"]) == (app, max_batch)]
            if not rows:
                continue
            base = alone["streaming"]["latency_s"]
            medians = {mode: _medians(rows, app, max_batch, mode) for mode in MODES}
            targets = []
            for factor in out["settings"]["targets"]:
                cap = {mode: capacity(rows, app, max_batch, mode, factor * base) for mode in MODES}
                ratio = cap["streaming"] / cap["barrier"] if cap["barrier"] else None
                # The modes under the target even at the highest rate swept: their capacity is
                # at least what it says, and may be more.
                past = [m for m in MODES if medians[m][-1][1] < factor * base]
                targets.append({"factor": factor, "target_s": factor * base, **cap,
                                "ratio": ratio, "past_sweep": past})
            summary.append({
                "app": app, "max_batch": max_batch,
                "alone_streaming_s": base, "alone_barrier_s": alone["barrier"]["latency_s"],
                "highest_rate": max(r["rate"] for r in rows),
                "saturation_rps": {mode: max(thr for _, _, thr in medians[mode]) for mode in MODES},
                "targets": targets,
            })
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", nargs="+", default=list(APPS), choices=APPS)
    parser.add_argument("--max-batch", nargs="+", type=int, default=[0, 8, 4, 2],
                        help="engine batch limits to sweep (0: the timing model's own)")
    parser.add_argument("--targets", nargs="+", type=float, default=[1.1, 1.25, 1.5, 2.0],
                        help="p50 targets, as multiples of the streaming ideal of one request")
    parser.add_argument("--min-rate", type=float, default=0.5)
    parser.add_argument("--max-rate", type=float, default=16.0)
    parser.add_argument("--step", type=float, default=2 ** 0.25,
                        help="each rate is the last one times this")
    parser.add_argument("--seeds", type=int, default=3, help="Poisson schedules a rate and mode")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="virtual seconds of arrivals a run")
    parser.add_argument("--quick", action="store_true",
                        help="tiny: the claim verifier at batch limit 2, rates 1 and 2, one "
                        "seed, 5 s")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ceiling.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.apps, args.max_batch, args.seeds, args.duration = ["claimverify"], [2], 1, 5.0
        args.min_rate, args.max_rate, args.step = 1.0, 2.0, 2.0
    if args.step <= 1 or args.min_rate <= 0:
        parser.error("--step must be above 1 and --min-rate above 0")
    os.environ.setdefault("ALTOFLOW_RERANKER", "bm25")
    batches = [b or None for b in args.max_batch]
    started = time.monotonic()
    out: dict[str, Any] = {
        "benchmark": "ceiling",
        "command": "python benchmarks/ceiling.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "settings": {"apps": args.apps, "profile": PROFILE, "max_batch": batches,
                     "targets": args.targets, "min_rate": args.min_rate, "max_rate": args.max_rate,
                     "step": args.step, "seeds": args.seeds, "duration_s": args.duration,
                     "reranker": "bm25"},
        "alone": [{"app": app, "max_batch": b, "mode": mode,
                   "latency_s": ideal.one_request(app, inputs_of(app)[0], profile=PROFILE,
                                                  barrier=mode == "barrier",
                                                  max_batch=b)["latency_s"]}
                  for app in args.apps for b in batches for mode in MODES],
        "rows": [],
    }
    for row in out["alone"]:
        if row["mode"] == "streaming":
            out["rows"] += sweep(row["app"], row["max_batch"], row["latency_s"], args)
    out["summary"] = summarize(out)
    out["wall_s"] = time.monotonic() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    for s in out["summary"]:
        ratios = ("-" if t["ratio"] is None else f"{t['ratio']:.2f}" for t in s["targets"])
        print(f"{s['app']:15} batch {s['max_batch'] or 'default':>7}: capacity streaming/barrier "
              + ", ".join(f"{t['factor']:g}x {r}" for t, r in zip(s["targets"], ratios)))
    print(f"wrote {args.out} in {out['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
