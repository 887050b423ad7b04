"""The tables of a router benchmark result, for the terminal and for docs/benchmarks-router.md."""

from __future__ import annotations

import json

from .common import MIDDLE_FRAMES, WHAT


def fmt_range(s: dict, spec: str = ",.0f") -> str:
    return f"{s['median']:{spec}} [{s['min']:{spec}}-{s['max']:{spec}}]"


def tables(result: dict, md: bool) -> str:
    lines = []
    sep = " | " if md else "  "

    def row(cells: list[str]) -> None:
        lines.append(("| " + " | ".join(cells) + " |") if md else sep.join(cells))

    def head(cells: list[str]) -> None:
        row(cells)
        if md:
            lines.append("|" + "|".join(" --- " for _ in cells) + "|")

    for loop, data in result["loops"].items():
        lines.append(f"{'### ' if md else ''}event loop: {loop}  (median [min-max] over {result['repeat']} repetitions)")
        lines.append("")
        head(["system", "p50 us", "p99 us", "CPU us/request at p50 load", "items/s",
              "frames/s through the middle", "middle: frames per CPU-s", "CPU us/item under load"])
        for system, s in data["analysis"]["systems"].items():
            cpu = ", ".join(f"{name} {v['median']:.1f}" for name, v in s["cpu_us_per_item"].items())
            middle = fmt_range(s["middle_frames_per_s"]) if MIDDLE_FRAMES[system] else "-"
            cap = fmt_range(s["middle_frames_per_cpu_s"]) if s.get("middle_frames_per_cpu_s") else "-"
            lcpu = ", ".join(f"{name} {v['median']:.0f}" for name, v in s["latency_cpu_us_per_item"].items())
            row([system, fmt_range(s["p50_us"], ".1f"), fmt_range(s["p99_us"], ".1f"), lcpu,
                 fmt_range(s["items_per_s"]), middle, cap, cpu])
        lines.append("")
        for system, s in data["analysis"]["systems"].items():
            ft = s.get("fanout_times")
            if ft:
                lines.append(
                    f"{system} fan-out of {result['settings']['fanout']:,}: first output reached the client "
                    f"after {fmt_range(ft['first_output_s'], '.2f')} s; the router finished the request "
                    f"(admission to Finish) after {fmt_range(ft['router_finish_s'], '.2f')} s; the client had "
                    f"read every event after {fmt_range(ft['client_done_s'], '.2f')} s.")
                lines.append("")
        head(["ratio (within each repetition)", "median [min-max]"])
        for name, v in data["analysis"]["ratios"].items():
            row([name, fmt_range(v, ".2f")])
        lines.append("")
        head(["goal", "from", "value", "met"])
        for name, g in data["goals"].items():
            if name == "memory":
                value = (f"objects {g['objects_delta_final']:+d}; RSS drift over the trend "
                         f"{g['rss_drift_over_trend_bytes'] / 2**20:+.1f} MiB; RSS vs the warm baseline "
                         f"{g['rss_delta_final_bytes'] / 2**20:+.1f} MiB ({g['rss_delta_final_rel']:+.1%}) "
                         f"after {g['finished']:,} requests")
                if g.get("rss_delta_trimmed_bytes") is not None:
                    value += f", {g['rss_delta_trimmed_bytes'] / 2**20:+.1f} MiB after malloc_trim(0)"
            else:
                value = f"{g['value']:.2f}"
            row([g["goal"], g["from"], value, "yes" if g["met"] else "**no**" if md else "NO"])
        lines.append("")
        mem = data.get("memory")
        if mem:
            head(["router process", "RSS MiB", "live objects", "note"])
            for p in mem["points"]:
                note = f"{p['in_flight']:,} in flight" if "in_flight" in p else ""
                row([p["label"], f"{p['rss_bytes'] / 2**20:.1f}", f"{p['objects']:,}", note])
            lines.append("")
            head(["finished requests", "RSS MiB", "live objects", "requests/s so far"])
            for p in mem["trend"]:
                row([f"{p['finished']:,}", f"{p['rss_bytes'] / 2**20:.1f}", f"{p['objects']:,}",
                     f"{p['requests_per_s']:,.0f}"])
            lines.append("")
            lines.append(f"{mem['finished']:,} of the {mem['target']:,} requests asked for finished within the "
                         f"{mem['budget_s']:.0f} s budget; in flight, each request costs "
                         f"{mem['inflight_bytes_per_request']:,.0f} B of RSS and "
                         f"{mem['inflight_objects_per_request']:.1f} live objects in the router process.")
            if mem.get("tracemalloc_inflight"):
                tm = mem["tracemalloc_inflight"]
                lines.append("")
                head([f"tracemalloc, {tm['bytes_per_request']:,.0f} B per in-flight request: site", "B/request",
                      "blocks/request"])
                for s in tm["top"]:
                    row([f"`{s['site']}`" if md else s["site"], f"{s['bytes_per_request']:,.0f}",
                         f"{s['count_per_request']:.2f}"])
            lines.append("")
    bd = result.get("breakdown")
    if bd:
        lines.append(f"{'### ' if md else ''}Where the router's CPU goes, without sockets ({bd['loop']}; "
                     "median of 3 passes; fake replica transports, answers encoded before the clock)")
        lines.append("")
        head(["path", "phase", "us"])
        f = bd["floors"]
        row(["direct endpoints", "encode + decode + re-encode + decode, per round trip",
             f"{f['direct_endpoints_us_per_round_trip']:.1f}"])
        row(["bare forwarder", "feed_raw + write_nowait + flush, both directions, per round trip",
             f"{f['bare_forwarder_us_per_round_trip']:.1f}"])
        r1 = bd["router1_us_per_request"]
        for k, v in r1.items():
            row(["router-1, per request", k, f"{v:.1f}"])
        row(["router-1, per request", "**total**" if md else "TOTAL", f"{sum(r1.values()):.1f}"])
        r2 = bd["router2_us_per_item"]
        for k, v in r2.items():
            row(["router-2, per item", k, f"{v:.1f}"])
        row(["router-2, per item", "**total**" if md else "TOTAL", f"{sum(r2.values()):.1f}"])
        lines.append("")
        for key, label in (("router1_modules", "router-1"), ("router2_modules", "router-2")):
            head([f"{label}: own time by module (cProfile)", "share", "us/item (profiled)"])
            for m in bd[key][:12]:
                name = f"`{m['module']}`" if md else m["module"]
                row([name, f"{m['share']:.0%}", f"{m['us_per_item']:.1f}"])
            lines.append("")
        for key, label in (("router1_functions", "router-1"), ("router2_functions", "router-2")):
            head([f"{label}: functions by own time (cProfile)", "calls/item", "own us/item", "cumulative us/item"])
            for r in bd[key][:15]:
                fn = f"`{r['function']}`" if md else r["function"]
                items = bd["settings_items"][label] if "settings_items" in bd else None
                row([fn, f"{r['calls'] / items:.2f}" if items else str(r["calls"]),
                     f"{r['tottime_us_per_item']:.2f}", f"{r['cumtime_us_per_item']:.2f}"])
            lines.append("")
    prof = result.get("profile")
    if prof:
        for key, rows in prof.items():
            lines.append(f"{'### ' if md else ''}cProfile of the router process, {key} (top by own time; "
                         "cProfile inflates call-heavy code)")
            lines.append("")
            head(["function", "calls/item", "own us/item", "cumulative us/item"])
            for r in rows[:20]:
                fn = f"`{r['function']}`" if md else r["function"]
                row([fn, f"{r['calls'] / r['items']:.2f}" if "items" in r else str(r["calls"]),
                     f"{r['tottime_us_per_item']:.2f}", f"{r['cumtime_us_per_item']:.2f}"])
            lines.append("")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    m = result["machine"]
    return "\n".join([
        "# Router benchmark: the runtime's own cost",
        "",
        "Generated by `python benchmarks/router.py --markdown` from `benchmarks/results/router.json`;",
        "do not edit by hand. How it measures: the docstring of `benchmarks/router.py`; how every benchmark",
        "is run and summarised: the top of `docs/benchmarks.md`.",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}",
        f"- machine: {m['platform']}, {m['cpus']} CPUs ({m['processor']}), Python {m['python']}, "
        f"protobuf {m['protobuf']}, uvloop {m['uvloop']}",
        f"- settings: {json.dumps(result['settings'])}",
        "",
        "What each system is:",
        "",
        *[f"- **{k}**: {v}" for k, v in WHAT.items()],
        "",
        "Latency is one frame or request in flight; items/s has many in flight. frames/s through the "
        "middle counts the frames the middle process reads or writes per item (bare 2; router-1 3: DATA "
        "out, DATA and ACK in; router-2 4); frames per CPU-s divides them by the middle process's own "
        "CPU time, what it would move with a core to itself (on 2 shared cores the endpoints, which "
        "encode and decode every frame in Python, set the end-to-end pace). CPU columns are user+system "
        "time of each process from /proc (10 ms ticks), during the latency phase (per request, one in "
        "flight) and during the throughput phase (per item). The router's process includes the client "
        "coroutines that submit requests and read their events.",
        "",
        tables(result, md=True),
    ]) + "\n"
