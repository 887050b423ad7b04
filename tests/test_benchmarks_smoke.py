"""Each benchmark runs on a tiny setting and writes its raw numbers (no timing is checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_executor_benchmark_quick(tmp_path):
    out = tmp_path / "executor.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "executor.py"), "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["benchmark"] == "executor"
    assert record["stages"] == 5 and record["items"] == 200 and record["repeat"] == 1
    assert set(record["variants"]) == {"async", "sync", "mixed", "floor-py", "floor-threads"}
    for name, variant in record["variants"].items():
        assert len(variant["seconds"]) == record["repeat"], name
        assert set(variant["summary"]) == {"median_s", "min_s", "max_s", "items_per_s"}, name
        assert name in proc.stdout  # one row of the table per variant


def test_placement_benchmark_quick(tmp_path):
    out = tmp_path / "placement.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "placement.py"), "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["benchmark"] == "placement" and record["settings"]["repeat"] == 1
    assert set(record["runs"]) == {"executor", "inline", "processes"}
    for name, runs in record["runs"].items():
        assert len(runs) == 1 and runs[0]["cpu_us_per_item"] > 0, name
        assert name in proc.stdout


def test_router_benchmark_quick(tmp_path):
    out = tmp_path / "router.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "router.py"), "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=290,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    record = json.loads(out.read_text())
    assert record["benchmark"] == "router"
    (loop, data), = record["loops"].items()
    assert set(data["trials"]) == {"direct", "worker", "bare", "router-1", "router-2"}
    for system, runs in data["trials"].items():
        assert len(runs) == record["repeat"], system
        for run in runs:
            assert run["latency_us"]["n"] > 0 and run["items_per_s"] > 0, system
        assert system in proc.stdout  # one row of the table per system
    memory = data["memory"]
    assert memory["finished"] > 0 and memory["points"] and memory["trend"]
    assert "hop_p50" in data["goals"] and "memory" in data["goals"]

    md = tmp_path / "router.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "router.py"), "--out", str(out), "--markdown", str(md)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    text = md.read_text()
    assert "| router-1 |" in text and record["command"] in text


def test_flow_benchmark_quick(tmp_path):
    out = tmp_path / "flow.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "flow.py"), "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    record = json.loads(out.read_text())
    assert record["benchmark"] == "flow"
    fanout, reader = record["fanout"], record["reader"]
    assert fanout["finished"] and fanout["items"] == 5000
    assert fanout["items_made"] == 5000 + 50  # and the small request's
    assert fanout["rss_peak_mib"] >= fanout["rss_before_mib"] > 0
    assert reader["small_requests"] >= 1 and reader["buffered_mib"] is not None
    for scenario in ("fanout", "reader"):
        assert scenario in proc.stdout  # one row of the table per scenario


@pytest.mark.ray
def test_ray_benchmark_quick(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ray.py"), "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=290,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    record = json.loads(out.read_text())
    assert record["benchmark"] == "ray" and record["settings"]["repeat"] == 1
    assert set(record["runs"]["hop"]) == {"processes", "tcp", "ray"}
    assert set(record["runs"]["flagship"]) == {"processes", "ray"}
    for runs in record["runs"]["hop"].values():
        assert len(runs) == 1 and 0 < runs[0]["p50_us"] <= runs[0]["p99_us"]
    for runs in record["runs"]["flagship"].values():
        assert len(runs) == 1 and runs[0]["requests_per_s"] > 0
    assert "hop p50 us" in proc.stdout and "flagship requests/s" in proc.stdout


def test_faults_benchmark_quick(tmp_path):
    out = tmp_path / "faults.json"
    scenarios = ["baseline", "hostile-bodies"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "faults.py"), "--quick", "--duration", "1.5",
         "--only", ",".join(scenarios), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    record = json.loads(out.read_text())
    assert record["benchmark"] == "faults"
    assert [r["scenario"] for r in record["scenarios"]] == scenarios
    for row in record["scenarios"]:
        assert row["tried"] == row["correct"] + row["clean"] + row["hung"] + row["wrong"] > 0
        assert 0 < row["rss_before"] <= row["rss_peak"]
        assert f"{row['scenario']:<16} {row['tried']:>6} {row['correct']:>8}" in proc.stdout
    hostile = record["scenarios"][1]
    assert hostile["clean_kinds"].get("HTTP 422", 0) >= 1  # the bodies were sent and answered
    assert "goal 0 hung, 0 wrong:" in proc.stdout


def test_http_request_benchmark_quick(tmp_path):
    out = tmp_path / "http_request.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "http_request.py"), "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    record = json.loads(out.read_text())
    assert record["benchmark"] == "http_request" and record["settings"]["repeat"] == 1
    assert set(record["runs"]) == set(record["summary"]) == {"floor", "altoflow-inline", "altoflow"}
    for name, runs in record["runs"].items():
        assert len(runs) == 1 and runs[0]["cpu_us_per_request"] > 0, name
        assert name in proc.stdout


def test_versions_benchmark_quick(tmp_path):
    # "Before" is this checkout too: the run needs a second one, not a different one.
    out = tmp_path / "versions.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "versions.py"), "--before", str(ROOT),
         "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    record = json.loads(out.read_text())
    assert record["benchmark"] == "versions" and record["settings"]["reps"] == 1
    assert sorted(r["system"] for r in record["runs"]) == ["after", "before", "floor"]
    for run in record["runs"]:
        assert run["completed"] > 0 and run["errors"] == 0 and run["cpu_ms_per_request"] > 0, run
    assert set(record["summary"]["median_ms"]) == {"before", "after", "floor"}
    assert "before" in proc.stdout and "floor" in proc.stdout


def test_versions_benchmark_names_a_missing_checkout(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "versions.py"), "--before", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and "git worktree add" in proc.stderr


def test_ceiling_benchmark_quick(tmp_path):
    out = tmp_path / "ceiling.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ceiling.py"), "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["benchmark"] == "ceiling"
    runs = {(r["mode"], r["rate"]) for r in record["rows"]}
    assert runs == {(mode, rate) for mode in ("streaming", "barrier") for rate in (1.0, 2.0)}
    assert all(r["max_batch"] == 2 and r["completed"] > 0 for r in record["rows"])
    (summary,) = record["summary"]
    assert [t["factor"] for t in summary["targets"]] == [1.1, 1.25, 1.5, 2.0]
    assert summary["alone_streaming_s"] <= summary["alone_barrier_s"] + 1e-9
    assert "capacity streaming/barrier" in proc.stdout


def test_the_ceiling_s_capacity_is_the_best_throughput_among_the_rates_under_the_target():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from ceiling import capacity
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    def row(rate, seed, p50, throughput):
        return {"app": "a", "max_batch": 2, "mode": "streaming", "rate": rate, "seed": seed,
                "p50_s": p50, "throughput": throughput}

    rows = [row(1, 0, 2.0, 0.9), row(1, 1, 2.2, 1.0), row(1, 2, 9.0, 0.8),  # median p50 2.2
            row(2, 0, 3.0, 1.8), row(2, 1, 5.0, 1.6), row(2, 2, 6.0, 1.7),  # median p50 5.0
            row(4, 0, 9.0, 2.0)]
    assert capacity(rows, "a", 2, "streaming", target=4.0) == 0.9  # rate 1's median throughput
    assert capacity(rows, "a", 2, "streaming", target=5.5) == 1.7  # rate 2's
    assert capacity(rows, "a", 2, "streaming", target=1.0) == 0.0
    assert capacity(rows, "a", 2, "barrier", target=99.0) == 0.0  # no rows of that mode
