"""The end-to-end benchmark runs on its tiny setting and writes its records (speed is never checked)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {"app", "system", "profile", "rate", "rep", "p50_s", "p99_s", "first_output_p50_s",
          "throughput", "cpu_s_per_request"}
SYSTEMS = {"altoflow", "altoflow-barrier", "langgraph", "floor", "ideal"}


def test_e2e_benchmark_quick(tmp_path):
    pytest.importorskip("langgraph")
    out = tmp_path / "e2e.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "e2e" and data["settings"]["reps"] == 1
    records = data["records"]
    assert {r["system"] for r in records} == SYSTEMS
    for record in records:
        assert set(record) == FIELDS, record
        assert record["app"] == "claimverify" and record["profile"] == "paper"
        assert record["p50_s"] is not None and record["throughput"] > 0, record
        assert (record["cpu_s_per_request"] is None) == (record["system"] == "ideal"), record
    for run in data["runs"]:
        assert run["errors"] == 0, run
        assert run["sim"]["finished"] > 0, run  # every live system called the simulator
    modes = {(row["app"], row["mode"]) for row in data["ideal"]}
    assert modes == {("claimverify", "streaming"), ("claimverify", "barrier")}
    assert (tmp_path / "e2e_latency_claimverify.png").stat().st_size > 0
    assert (tmp_path / "e2e_cpu.png").stat().st_size > 0


def test_e2e_benchmark_quick_with_the_lm_in_process(tmp_path):
    """``--lm inprocess``: no sim-lm, every system's own simulated engines; its plots get the
    file's name, so they never overwrite the HTTP run's."""
    pytest.importorskip("langgraph")
    out = tmp_path / "e2e_inprocess.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--quick", "--lm", "inprocess",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["settings"]["lm"] == "inprocess"
    live = [r for r in data["records"] if r["system"] != "ideal"]
    assert {r["system"] for r in live} == SYSTEMS - {"ideal"}
    assert all(r["cpu_s_per_request"] > 0 and r["throughput"] > 0 for r in live), live
    for run in data["runs"]:
        assert run["errors"] == 0 and run["sim_cpu_s"] is None and "sim" not in run, run
    assert (tmp_path / "e2e_inprocess_cpu.png").stat().st_size > 0
    assert not (tmp_path / "e2e_cpu.png").exists()


def test_e2e_refuses_the_lm_in_process_with_processes():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--lm", "inprocess",
         "--placement", "processes", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "--lm inprocess needs --placement inline" in proc.stderr


def test_the_paired_overhead_takes_each_run_less_the_floor_of_its_own_round():
    """Three rounds at very different levels: each system's median less the floor's median
    mixes them (LangGraph 10 ms over the floor here), the paired figure takes every run against its
    own round's floor."""
    spec = importlib.util.spec_from_file_location("benchmarks_report", ROOT / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)

    def run(system, rep, cpu):
        return {"app": "a", "profile": "p", "system": system, "rate": 4.0, "rep": rep,
                "cpu_s_per_request": cpu}
    records = [run("floor", 0, 0.030), run("altoflow", 0, 0.031), run("langgraph", 0, 0.034),
               run("floor", 1, 0.050), run("altoflow", 1, 0.052), run("langgraph", 1, 0.054),
               run("floor", 2, 0.040), run("altoflow", 2, 0.041), run("langgraph", 2, 0.050)]
    assert report._paired_overhead(records, "altoflow", app="a") == pytest.approx(0.001)
    assert report._paired_overhead(records, "langgraph", app="a") == pytest.approx(0.004)
    assert report._paired_overhead(records, "altoflow", app="other") is None
    section = "\n".join(report.e2e_inprocess({
        "settings": {"rates": [4.0], "reps": 3, "duration_s": 1}, "series": ["p/a"],
        "records": records, "command": "c", "date": "d", "machine": {}}))
    assert "| a | p | 1.0 | 4.0 | 0.25: met |" in section
