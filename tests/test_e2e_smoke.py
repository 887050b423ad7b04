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
