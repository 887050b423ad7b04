"""The LangGraph twin of the generate-judge-filter app answers like the app on the same input."""

from __future__ import annotations

import asyncio
import inspect
import json
from pathlib import Path

import pytest

import altoflow as af
from _twins import load_twin
from altoflow.compiler import load_target

pytest.importorskip("langgraph")

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "examples" / "judgefilter" / "app.py")
EXAMPLE = json.loads((ROOT / "examples" / "judgefilter" / "input.json").read_text())


def _load_twin():
    return load_twin("judgefilter")


@pytest.fixture(autouse=True)
def _fast(fast_simulated_lm: None) -> None:
    """Every test here runs on the fast simulated engine."""


@pytest.mark.parametrize("fields", [EXAMPLE, {"question": "What does the global statement do?", "min_score": 10}], ids=["example", "edge"])
def test_twin_gives_the_apps_answer(fields) -> None:
    got = asyncio.run(_load_twin().run(**fields))
    want = af.run(APP, **fields).to_dict()
    assert set(got) == set(want)
    assert all(j["passed"] for j in got["kept"]) and len(got["best"]) <= 3
    # The simulated LM's text depends only on the prompt and the seed: the same answer.
    assert got == want


def test_twin_takes_the_apps_request_fields_with_the_same_defaults() -> None:
    schema = load_target(APP).compiled.plan.request_schema
    params = inspect.signature(_load_twin().run).parameters
    assert set(params) == set(schema["properties"])
    for name, param in params.items():
        default = schema["properties"][name].get("default", inspect.Parameter.empty)
        assert (list(param.default) if isinstance(param.default, tuple) else param.default) == default, name
