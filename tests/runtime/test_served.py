"""The served runtime (router + one process per replica) returns what ``altoflow.run`` returns."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import altoflow as af
from altoflow.compiler import load_target
from altoflow.runtime.supervisor import Supervisor
from oracle import evaluate

TESTS = Path(__file__).resolve().parent.parent


async def _collect(handle) -> tuple[dict, list]:
    outputs: dict = {}
    events = []
    async for event in handle:
        events.append(event)
        if event.type == "output":
            outputs.setdefault(event.stage, {})[tuple(event.ancestry.values())] = event.value
    return outputs, events


def _expected(target: str, **fields) -> tuple[dict | None, af.StageError | None]:
    try:
        result = af.run(target, **fields)
    except af.StageError as err:
        return None, err
    out = {}
    for stage in load_target(target).compiled.plan.outputs:
        vals = {tuple(a.values()): v for a, v in result.items_with_ancestry(stage.name)}
        if vals:
            out[stage.name] = vals
    return out, None


def _serve_and_compare(target: str, requests: list[dict], replicas=None, barrier=False,
                       inline=frozenset()) -> None:
    expectations = [_expected(target, **fields) for fields in requests]
    compiled = load_target(target).compiled

    async def serve():
        async with Supervisor(compiled, target, replicas=replicas, barrier=barrier,
                              inline=inline) as sup:
            await sup.wait_ready()
            # Every request at once: they share the replicas.
            handles = [sup.router.submit(fields) for fields in requests]
            return await asyncio.wait_for(asyncio.gather(*(_collect(h) for h in handles)), 60)

    got = asyncio.run(serve())
    for fields, (outputs, events), (expected, error) in zip(requests, got, expectations):
        last = events[-1]
        if error is not None:
            assert last.type == "error", f"{fields}: expected {error}, got {last}"
            # Which item failed first depends on scheduling, but it is one that fails.
            failing = asyncio.run(evaluate(target, **fields)).errors
            assert (last.stage, tuple(last.ancestry.items())) in failing, (last, failing)
        else:
            assert last.type == "done", f"{fields}: {last}"
            assert outputs == expected, fields


def test_factool_pipeline_served_with_replicas():
    target = str(TESTS / "pipelines" / "factool.py")
    _serve_and_compare(
        target, [{"question": f"question {i}"} for i in range(20)],
        replicas={"queries": 2, "bm25": 3, "evidence": 2},
    )


def test_barrier_mode_gives_the_same_results():
    target = str(TESTS / "pipelines" / "factool.py")
    _serve_and_compare(target, [{"question": f"q{i}"} for i in range(5)], barrier=True)


def test_factool_pipeline_served_with_inline_stages():
    # The light stages in the router's process, two of them with several (inline) replicas,
    # beside replica processes: the same results.
    target = str(TESTS / "pipelines" / "factool.py")
    names = load_target(target).compiled.plan.names
    inline = frozenset(names[1::2])
    _serve_and_compare(target, [{"question": f"question {i}"} for i in range(20)],
                       replicas={"queries": 2, "bm25": 3, "evidence": 2}, inline=inline)


def test_inline_replicas_are_in_the_router_process():
    target = str(TESTS / "pipelines" / "factool.py")
    compiled = load_target(target).compiled

    async def main():
        async with Supervisor(compiled, target, inline=frozenset(compiled.plan.names)) as sup:
            await sup.wait_ready()
            assert sup.children == []  # no process started
            assert sup.router.ready() == {s.name: s.replicas for s in compiled.plan.stages}
            result = [e async for e in sup.router.submit({"question": "q"})]
            assert result[-1].type == "done"

    asyncio.run(main())


def test_inline_names_a_stage():
    target = str(TESTS / "pipelines" / "factool.py")
    compiled = load_target(target).compiled

    async def main():
        async with Supervisor(compiled, target, inline=frozenset({"nope"})):
            pass

    with pytest.raises(ValueError, match="--inline names no stage: nope; stages: "):
        asyncio.run(main())


def test_an_inline_class_stage_whose_init_fails_stops_the_start(tmp_path):
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent("""
        from altoflow import stage

        @stage
        class model:
            def __init__(self):
                raise OSError("no weights at /models/x")

            def __call__(self, x: int) -> int:
                return x
    """))
    target = str(app)

    async def main():
        async with Supervisor(load_target(target).compiled, target, inline=frozenset({"model"})):
            pass

    with pytest.raises(RuntimeError, match=r"inline replica model#0 could not start: OSError: no "
                                           r"weights at /models/x\. Fix the stage's imports or __init__"):
        asyncio.run(main())


def test_a_failing_inline_stage_fails_its_request_only(tmp_path):
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent("""
        from altoflow import stage

        @stage
        def half(x: int) -> int:
            if x % 2:
                raise ValueError(f"{x} is odd")
            return x // 2
    """))
    target = str(app)

    async def main():
        async with Supervisor(load_target(target).compiled, target, inline=frozenset({"half"})) as sup:
            await sup.wait_ready()
            odd = [e async for e in sup.router.submit({"x": 3})]
            even = [e async for e in sup.router.submit({"x": 4})]
            return odd[-1], even

    error, even = asyncio.run(main())
    assert error.type == "error" and error.stage == "half" and "3 is odd" in error.error
    assert [(e.type, e.value) for e in even] == [("output", 2), ("done", None)]


def _write_random(tmp_path: Path, defs) -> str:
    path = tmp_path / "random_app.py"
    payload = json.dumps([d.__dict__ for d in defs])
    path.write_text(textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(TESTS)!r})
        from randompipes import StageDef, build
        DEFS = [StageDef(**{{**d, "inputs": tuple(d["inputs"])}}) for d in json.loads({payload!r})]
        pipeline = build(DEFS)
    """))
    return f"{path}:pipeline"


# Each example starts a process per replica, so the default run is small; set
# ALTOFLOW_SERVED_EXAMPLES=50 for a longer search.
@settings(max_examples=int(os.environ.get("ALTOFLOW_SERVED_EXAMPLES", "4")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=__import__("randompipes").pipelines(max_stages=5),
       xs=st.lists(st.integers(0, 50), min_size=1, max_size=4),
       placement=st.lists(st.booleans(), min_size=5, max_size=5))
def test_random_pipelines_served_match_reference(tmp_path_factory, case, xs, placement):
    # Each stage's replicas run as processes or inline in the router (placement[i]), mixed.
    defs, _ = case
    target = _write_random(tmp_path_factory.mktemp("app"), defs)
    names = load_target(target).compiled.plan.names
    inline = frozenset(n for n, here in zip(names, placement) if here)
    _serve_and_compare(target, [{"x": x} for x in xs], inline=inline)
