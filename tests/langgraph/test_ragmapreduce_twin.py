"""The LangGraph twin of the RAG map-reduce app answers like the app on the same input."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import sys
from pathlib import Path

import pytest

import altoflow as af
from altoflow.compiler import load_target

pytest.importorskip("langgraph")

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "examples" / "ragmapreduce" / "app.py")
EXAMPLE = json.loads((ROOT / "examples" / "ragmapreduce" / "input.json").read_text())


def _load_twin():
    name = "langgraph_twin_ragmapreduce"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "langgraph" / "ragmapreduce.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(autouse=True)
def fast_simulated_lm(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ALTOFLOW_LM", "ALTOFLOW_LM_URL", "ALTOFLOW_LM_MODEL", "ALTOFLOW_LM_SEED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALTOFLOW_LM_SPEED", "100")


@pytest.mark.parametrize("fields", [EXAMPLE, {"question": "zzzqqq xxyyzz", "k": 3}], ids=["example", "edge"])
def test_twin_gives_the_apps_answer(fields) -> None:
    got = asyncio.run(_load_twin().run(**fields))
    want = af.run(APP, **fields).to_dict()
    assert set(got) == set(want)
    assert [s["id"] for s in got["summary"]] == got["answer"]["sources"]
    # The simulated LM's text depends only on the prompt and the seed: the same answer.
    assert got == want


def test_twin_takes_the_apps_request_fields_with_the_same_defaults() -> None:
    schema = load_target(APP).compiled.plan.request_schema
    params = inspect.signature(_load_twin().run).parameters
    assert set(params) == set(schema["properties"])
    for name, param in params.items():
        default = schema["properties"][name].get("default", inspect.Parameter.empty)
        assert (list(param.default) if isinstance(param.default, tuple) else param.default) == default, name
