"""The retrieval benchmark runs, on its smallest setting, and writes what its table shows."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("rank_bm25")
pytest.importorskip("torch")
pytest.importorskip("colbert")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "retrieval.py"


def test_quick_run_writes_json(foldoc, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as when run as a script: it imports _stats
    spec = importlib.util.spec_from_file_location("retrieval_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    out = tmp_path / "retrieval.json"
    module.main(["--quick", "--out", str(out)])

    result = json.loads(out.read_text())
    assert result["corpus"]["documents"] == len(foldoc)
    assert result["settings"] == {
        "queries": 2, "repeats": 1, "inner": 3, "k": 10, "candidates": [5],
        "doc_maxlen": 64, "query_maxlen": 32, "batch_size": 32, "torch_threads": [1],
    }  # fmt: skip
    for series in [
        result["bm25"]["search"],
        result["bm25"]["token_scores_per_token"],
        result["colbert"]["by_torch_threads"]["1"]["encode_query"],
        result["colbert"]["by_torch_threads"]["1"]["rerank"]["5"],
    ]:
        assert series["cpu_ms"]["median"] > 0 and series["wall_ms"]["n"] == 1
    python = next(k for k in result["known_answers"] if k["answer"] == "Python")
    assert python["bm25_rank"] == 1 and python["colbert_rank"] is not None
    printed = capsys.readouterr().out
    assert "| ColBERT rerank 5 BM25 candidates (1 torch thread) |" in printed
    assert f"wrote {out}" in printed
