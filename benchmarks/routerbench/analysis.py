"""From trials to numbers: per-system summaries, ratios within each repetition, and the goals."""

from __future__ import annotations

from typing import Any

from _stats import summary

from .common import MIDDLE_FRAMES, MIDDLE_PROCESS


def capacity(system: str, run: dict) -> float:
    """Frames the middle process handled per second of its own CPU time: what it would move
    with a core to itself, whatever the endpoints' speed (on 2 shared cores they set the pace)."""
    cpu = run["cpu_s"][MIDDLE_PROCESS[system]]
    return MIDDLE_FRAMES[system] * run["items"] / cpu if cpu > 0 else float("nan")


def analyse(trials: dict[str, list[dict]]) -> dict:
    """Per system: medians and min-max; ratios computed within each repetition, then summarised."""
    out: dict[str, Any] = {"systems": {}, "ratios": {}}
    for system, runs in trials.items():
        if not runs:
            continue
        items = [r["items_per_s"] for r in runs]
        row = {
            "p50_us": summary([r["latency_us"]["p50"] for r in runs]),
            "p99_us": summary([r["latency_us"]["p99"] for r in runs]),
            "items_per_s": summary(items),
            "middle_frames_per_s": summary([x * MIDDLE_FRAMES[system] for x in items]),
            "middle_frames_per_cpu_s": (summary([capacity(system, r) for r in runs])
                                        if system in MIDDLE_PROCESS else None),
            "cpu_us_per_item": {
                name: summary([r["cpu_s"][i] / r["items"] * 1e6 for r in runs])
                for i, name in enumerate(runs[0]["cpu_processes"])
            },
            "latency_cpu_us_per_item": {
                name: summary([r["latency_us"]["cpu_us_per_item"][i] for r in runs])
                for i, name in enumerate(runs[0]["cpu_processes"])
            },
        }
        if all("fanout_times" in r for r in runs):
            row["fanout_times"] = {k: summary([r["fanout_times"][k] for r in runs])
                                   for k in runs[0]["fanout_times"]}
        out["systems"][system] = row
    reps = min(len(r) for r in trials.values())

    def ratio(name: str, f: Any) -> None:
        try:
            values = [f(i) for i in range(reps)]
        except KeyError:
            return
        out["ratios"][name] = {**summary(values), "values": values}

    t = trials
    d = lambda s, i: t[s][i]["latency_us"]["p50"]  # noqa: E731
    q = lambda s, i: t[s][i]["items_per_s"]  # noqa: E731
    ratio("bare_added_p50_us", lambda i: d("bare", i) - d("direct", i))
    ratio("worker_added_p50_us", lambda i: d("worker", i) - d("direct", i))
    ratio("router1_minus_worker_p50_us", lambda i: d("router-1", i) - d("worker", i))
    ratio("router1_added_p50_us", lambda i: d("router-1", i) - d("direct", i))
    ratio("router1_added_over_direct_p50", lambda i: (d("router-1", i) - d("direct", i)) / d("direct", i))
    ratio("router1_p50_over_direct_p50", lambda i: d("router-1", i) / d("direct", i))
    ratio("router2_hop_added_p50_us", lambda i: d("router-2", i) - d("router-1", i))
    ratio("router2_hop_added_over_direct_p50", lambda i: (d("router-2", i) - d("router-1", i)) / d("direct", i))
    ratio("bare_frames_over_direct_items", lambda i: 2 * q("bare", i) / q("direct", i))
    ratio("router1_frames_over_bare_frames", lambda i: 3 * q("router-1", i) / (2 * q("bare", i)))
    ratio("router2_frames_over_bare_frames", lambda i: 4 * q("router-2", i) / (2 * q("bare", i)))
    c = lambda s, i: capacity(s, t[s][i])  # noqa: E731
    ratio("router1_frames_per_cpu_over_bare", lambda i: c("router-1", i) / c("bare", i))
    ratio("router2_frames_per_cpu_over_bare", lambda i: c("router-2", i) / c("bare", i))
    ratio("router1_items_over_bare_items", lambda i: q("router-1", i) / q("bare", i))
    ratio("router2_items_over_bare_items", lambda i: q("router-2", i) / q("bare", i))
    return out


def goals(analysis: dict, memory: dict | None) -> dict:
    """The runtime's performance requirements (`"from": "required"`: one hop adds at most 1.5x the
    direct latency, the router keeps a quarter of the bare loop's frames/s, no leak) and
    stricter views of our own (`"stricter"`): one replica-to-replica hop, and frames per
    CPU-second, which leaves the endpoints' pace out."""
    r = analysis["ratios"]
    out = {}
    if "router1_added_over_direct_p50" in r:
        v = r["router1_added_over_direct_p50"]["median"]
        out["hop_p50"] = {"goal": "router-1 p50 minus direct p50 <= 1.5x direct p50", "value": v,
                          "met": v <= 1.5, "from": "required"}
    if "router2_hop_added_over_direct_p50" in r:
        v = r["router2_hop_added_over_direct_p50"]["median"]
        out["replica_hop_p50"] = {"goal": "router-2 p50 minus router-1 p50 (one replica->router->replica "
                                          "hop) <= 1.5x direct p50", "value": v, "met": v <= 1.5,
                                  "from": "stricter"}
    for k, what in (("router1_frames_over_bare_frames", "router-1 frames/s through the middle"),
                    ("router2_frames_over_bare_frames", "router-2 frames/s through the middle"),
                    ("router1_frames_per_cpu_over_bare", "router-1 frames per CPU-second of the middle"),
                    ("router2_frames_per_cpu_over_bare", "router-2 frames per CPU-second of the middle")):
        if k in r:
            v = r[k]["median"]
            out[k] = {"goal": f"{what} >= 0.25x the bare forwarder's", "value": v, "met": v >= 0.25,
                      "from": "stricter" if "per_cpu" in k else "required"}
    if memory is not None:
        base = next(p for p in memory["points"] if p["label"].startswith("after warm-up"))
        rel = memory["rss_delta_final_bytes"] / base["rss_bytes"]
        trend = memory["trend"]
        drift = trend[-1]["rss_bytes"] - trend[0]["rss_bytes"] if len(trend) > 1 else 0
        trimmed = memory.get("rss_delta_trimmed_bytes")
        met = drift <= 2 << 20 and abs(memory["objects_delta_final"]) <= 2000
        out["memory"] = {"goal": "no leak: live objects back to the warm baseline (within 2000) and RSS "
                                 "flat over the finished requests (last trend point minus first <= 2 MiB); "
                                 "the RSS left over from the 10k peak is reported, before and after "
                                 "malloc_trim(0)",
                         "rss_delta_final_bytes": memory["rss_delta_final_bytes"], "rss_delta_final_rel": rel,
                         "rss_delta_trimmed_bytes": trimmed,
                         "rss_drift_over_trend_bytes": drift,
                         "objects_delta_final": memory["objects_delta_final"],
                         "finished": memory["finished"], "met": met, "from": "required"}
    return out
