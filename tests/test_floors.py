"""The no-framework floors of the end-to-end benchmark give each app's answer, and the ideal
(the floor on a virtual clock) takes the time the simulator's model says, on the app's pools.

With the deterministic simulated engine the same prompts give the same text, so a floor must
return what ``altoflow.run`` returns for its app, as ``Result.to_dict()`` shows it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

import pytest

import altoflow as af

ROOT = Path(__file__).resolve().parent.parent
FLOOR = ROOT / "benchmarks" / "floor"
APPS = ("claimverify", "ragmapreduce", "selfconsistency", "judgefilter")
# The pools that each app's LM stages ask for (the paper profile has every one of them).
POOLS = {
    "claimverify": {"answer", "claims", "queries", "verdict"},
    "ragmapreduce": {"summary", "synthesis"},
    "selfconsistency": {"reasoning"},
    "judgefilter": {"generate", "judge"},
}


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"floor_{name}", FLOOR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def fast_sim_bm25(monkeypatch):
    monkeypatch.setenv("ALTOFLOW_LM", "sim")
    monkeypatch.setenv("ALTOFLOW_LM_SPEED", "100")
    monkeypatch.setenv("ALTOFLOW_RERANKER", "bm25")


def _fields(app: str) -> dict:
    return json.loads((ROOT / "examples" / app / "input.json").read_text())


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("barrier", [False, True])
def test_floor_gives_the_apps_answer(app, barrier):
    floor = _module(app)
    fields = _fields(app)
    got = asyncio.run(floor.run(**fields)) if not barrier else asyncio.run(_barrier_run(floor, fields))
    want = af.run(af.Pipeline.from_module(str(ROOT / "examples" / app / "app.py")), **fields).to_dict()
    assert got == want


async def _barrier_run(floor, fields: dict) -> dict:
    # The barrier floor sends the same events, later; compare its outputs as run() gathers them.
    events = [e async for e in floor.stream(**fields, barrier=True)]
    streamed = [e async for e in floor.stream(**fields)]
    assert sorted(map(json.dumps, events)) == sorted(map(json.dumps, streamed))
    return await floor.run(**fields)


def _ideal():
    spec = importlib.util.spec_from_file_location("floor_ideal", FLOOR / "ideal.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("app", APPS)
def test_ideal_runs_the_apps_calls_on_its_pools_on_the_virtual_clock(app):
    ideal = _ideal()
    alone = ideal.one_request(app, _fields(app), profile="paper")
    barrier = ideal.one_request(app, _fields(app), profile="paper", barrier=True)
    used = {pool for pool, stats in alone["pools"].items() if stats.finished}
    assert used == POOLS[app]
    # At least one LM call's time to first token and a few tokens; streaming never loses.
    assert 0.25 < alone["first_output_s"] <= alone["latency_s"] <= barrier["latency_s"] + 1e-9
    assert alone["first_output_s"] <= barrier["first_output_s"] + 1e-9


def test_the_virtual_clock_jumps_instead_of_sleeping():
    ideal = _ideal()
    loop = ideal.VirtualClockLoop()
    try:
        loop.run_until_complete(asyncio.sleep(3600))
        assert 3600 <= loop.time() < 3600.1  # an hour of virtual time, at once
    finally:
        loop.close()


def test_the_ideal_takes_the_batch_limit_that_sim_lm_max_batch_would():
    # The claim verifier's verdicts, one a claim, go to one engine: with one place in its batch
    # the second must queue, and the request takes longer than with 256 places.
    ideal = _ideal()
    fields = _fields("claimverify")
    free = ideal.one_request("claimverify", fields, profile="paper")
    tight = ideal.one_request("claimverify", fields, profile="paper", max_batch=1)
    assert {stats.max_batch for stats in tight["pools"].values()} == {1}
    assert tight["pools"]["verdict"].queued > 0
    assert sum(stats.queued for stats in free["pools"].values()) == 0
    assert tight["latency_s"] > free["latency_s"]
