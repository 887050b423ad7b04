"""The paper's pictures (benchmarks/timeline.py, Figure 2; benchmarks/figure4.py, Figure 4) run
on their tiny settings and write the JSON and the PNG that docs/benchmarks.md shows (no timing is
checked)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _report():
    """benchmarks/report.py, loaded from its file (the benchmarks are not a package)."""
    spec = importlib.util.spec_from_file_location("benchmarks_report", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(script: str, out: Path, timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_figure2_timeline_benchmark_quick(tmp_path):
    pytest.importorskip("matplotlib")
    report = _report()
    out = tmp_path / "timeline.json"
    proc = _run("timeline.py", out, 300)
    data = json.loads(out.read_text())
    assert data["benchmark"] == "timeline" and set(data["runs"]) == {"streaming", "barrier"}
    names = ["answer", "claims", "queries", "query_tokens", "bm25", "candidates", "evidence",
             "verdict", "report"]
    for mode, run in data["runs"].items():
        doc = run["timeline"]
        assert doc["request_id"] == f"figure2-{mode}" and doc["outcome"] == "done", mode
        assert [s["name"] for s in doc["stages"]] == names
        assert {i["stage"] for i in doc["invocations"]} == set(names)
        assert run["summary"]["overlap"]["downstream"] > 0
        assert mode in proc.stdout
    # Streaming overlaps a fan-out with the work on its items; --barrier never does.
    assert data["runs"]["streaming"]["summary"]["overlap"]["started_before_fanout_end"] > 0
    assert data["runs"]["barrier"]["summary"]["overlap"]["started_before_fanout_end"] == 0
    assert (tmp_path / "figure2.png").read_bytes()[:4] == b"\x89PNG"
    section = "\n".join(report.timeline(data))
    assert "| streaming |" in section and "| barrier |" in section and "figure2.png" in section


def test_figure4_benchmark_quick(tmp_path):
    pytest.importorskip("matplotlib")
    report = _report()
    out = tmp_path / "figure4.json"
    proc = _run("figure4.py", out, 300)
    data = json.loads(out.read_text())
    assert data["benchmark"] == "figure4" and data["settings"]["reps"] == 1
    assert len(data["fanouts"]) == data["settings"]["requests"] == 8
    assert {r["mode"] for r in data["runs"]} == {"aggregate-keyed", "request-keyed"}
    for run in data["runs"]:
        # Every work item is in the timelines, on one of the replicas.
        assert sum(run["items"]) == sum(data["fanouts"]), run
        assert len(run["utilisation"]) == data["settings"]["replicas"] == 4
        assert all(0 <= u <= 1 for u in run["utilisation"]) and run["makespan_s"] > 0
    for mode in ("aggregate-keyed", "request-keyed"):
        assert mode in proc.stdout
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    section = "\n".join(report.figure4(data))
    assert "| aggregate-keyed |" in section and "| request-keyed |" in section
