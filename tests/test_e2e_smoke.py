"""The end-to-end benchmark runs on its tiny setting and writes its records (speed is never checked)."""

from __future__ import annotations

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
