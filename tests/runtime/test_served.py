"""The served runtime (router + one process per replica) returns what ``altoflow.run`` returns."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
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

    _compare(target, requests, asyncio.run(serve()), expectations)


def _compare(target: str, requests: list[dict], got: list, expectations: list) -> None:
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


def test_inline_all_runs_every_stage_in_the_router_process():
    target = str(TESTS / "pipelines" / "factool.py")
    compiled = load_target(target).compiled

    async def main():
        async with Supervisor(compiled, target, inline=frozenset({"all"})) as sup:
            await sup.wait_ready()
            assert sup.children == []
            return await _collect(sup.router.submit({"question": "q"}))

    (outputs, events) = asyncio.run(main())
    expected, _ = _expected(target, question="q")
    assert events[-1].type == "done" and outputs == expected


_BOXES = """
    from altoflow import stage

    class Box:  # a plain object: the codec has no format for it
        def __init__(self, n):
            self.n = n

    @stage
    def make(x: int):
        return Box(x)

    @stage(output=True)
    def use(make) -> int:
        return make.n * 10
"""


def test_inline_stages_hand_values_over_as_objects(tmp_path):
    # Between inline stages a value is never encoded (as in altoflow.run), so even one the
    # codec cannot carry goes through; sent on to a replica process, it is encoded as always.
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(_BOXES))
    target = str(app)

    async def main(inline):
        async with Supervisor(load_target(target).compiled, target, inline=frozenset(inline)) as sup:
            await sup.wait_ready()
            return [e async for e in sup.router.submit({"x": 4})]

    assert af.run(target, x=4)["use"] == 40
    together = asyncio.run(main({"make", "use"}))
    assert [(e.type, e.value) for e in together] == [("output", 40), ("done", None)]
    apart = asyncio.run(main({"make"}))
    assert apart[-1].type == "error" and apart[-1].stage == "make"
    assert "cannot be sent on" in apart[-1].error and "Box" in apart[-1].error


_SHARED_FIELD = """
from altoflow import stage

@stage
def first(tags: list[str]) -> int:
    return id(tags)

@stage(output=True)
def second(first: int, tags: list[str]) -> dict:
    return {"same": id(tags) == first, "tags": tags}
"""


def test_a_field_only_inline_stages_take_is_handed_over_as_the_value_itself(tmp_path):
    # As altoflow.run does: every stage that takes the field gets the one validated value.
    # When a replica process takes it too, it is encoded for everyone, as always.
    app = tmp_path / "app.py"
    app.write_text(_SHARED_FIELD)
    target = str(app)

    async def main(inline):
        async with Supervisor(load_target(target).compiled, target, inline=frozenset(inline)) as sup:
            await sup.wait_ready()
            return [e async for e in sup.router.submit({"tags": ["a", "b"]})]

    assert af.run(target, tags=["a", "b"])["second"] == {"same": True, "tags": ["a", "b"]}
    together = asyncio.run(main({"first", "second"}))
    assert [(e.type, e.value) for e in together] == [
        ("output", {"same": True, "tags": ["a", "b"]}), ("done", None)]
    apart = asyncio.run(main({"first"}))
    assert [(e.type, e.value) for e in apart] == [
        ("output", {"same": False, "tags": ["a", "b"]}), ("done", None)]


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


CHATTY = str(TESTS / "pipelines" / "chatty.py")


@pytest.mark.parametrize("inline", [False, True], ids=["process", "inline"])
def test_a_failing_stage_is_logged_by_the_router_with_the_request_and_users_traceback(
        caplog, inline):
    async def main():
        async with Supervisor(load_target(CHATTY).compiled, CHATTY,
                              inline=frozenset({"checked"} if inline else ())) as sup:
            await sup.wait_ready()
            return [e async for e in sup.router.submit({"text": "fine bad"}, request_id="srv-1")]

    with caplog.at_level(logging.ERROR, logger="altoflow.router"):
        events = asyncio.run(main())
    error = events[-1]
    [record] = [r for r in caplog.records if r.name == "altoflow.router"]
    assert (record.request_id, record.stage, record.ancestry) == ("srv-1", "checked", {"word": 1})
    message = record.getMessage()
    assert message.startswith("request srv-1: stage 'checked' failed on word=1 at "
                              f"{CHATTY}:") and message.endswith("ValueError: cannot check 'bad'")
    frames = [line for line in record.user_traceback.splitlines() if line.startswith("  File")]
    assert frames[0].startswith(f'  File "{CHATTY}"') and frames[0].endswith("in checked")
    assert frames[-1].endswith("in _check")
    assert error.type == "error" and error.traceback == record.user_traceback


DROPPING = """
from altoflow import stage

@stage(fanout="n")
def numbers(count: int):
    yield from range(count)

@stage(on_error="drop")
def half(numbers: int) -> int:
    if numbers % 2:
        raise ValueError(f"{numbers} is odd")
    return numbers // 2
"""


def test_a_stage_raising_under_on_error_drop_is_logged_as_a_warning(tmp_path, caplog):
    app = tmp_path / "dropping.py"
    app.write_text(DROPPING)
    target = str(app)

    async def main():
        async with Supervisor(load_target(target).compiled, target) as sup:
            await sup.wait_ready()
            return [e async for e in sup.router.submit({"count": 2}, request_id="drop-1")]

    with caplog.at_level(logging.WARNING, logger="altoflow"):
        events = asyncio.run(main())
        assert af.run(target, count=2)["half"] == [0]  # in-process: logged too, without an id
    assert [(e.type, e.value) for e in events] == [("output", 0), ("done", None)]
    served, local = [r for r in caplog.records if r.name in ("altoflow.router", "altoflow.local")]
    assert (served.levelno, served.request_id, served.stage, served.ancestry) == (
        logging.WARNING, "drop-1", "half", {"n": 1})
    assert "on_error='drop'" in served.getMessage() and "ValueError: 1 is odd" in served.getMessage()
    assert served.user_traceback.splitlines()[1] == f'  File "{target}", line 11, in half'
    assert (local.name, local.request_id, local.stage) == ("altoflow.local", None, "half")
    assert local.user_traceback == served.user_traceback


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


# A replica of a random aggregate stage is killed (kill -9) a random moment into the run: the
# router replays the groups it held to its restarted replica, so every request still gets what
# altoflow.run returns. Stages are slowed a little so that groups are open when the kill comes.
@settings(max_examples=int(os.environ.get("ALTOFLOW_SERVED_EXAMPLES", "3")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=__import__("randompipes").pipelines(max_stages=5),
       xs=st.lists(st.integers(0, 50), min_size=1, max_size=4),
       data=st.data())
def test_random_pipelines_served_match_reference_when_an_aggregate_replica_is_killed(
        tmp_path_factory, case, xs, data):
    from dataclasses import replace

    defs, _ = case
    aggregates = [d for d in defs if d.kind in ("agg", "aggfan")]
    assume(aggregates)
    defs = [replace(d, delay=max(d.delay, 0.02)) for d in defs]
    victim = data.draw(st.sampled_from(aggregates), label="victim")
    after = data.draw(st.sampled_from([0.0, 0.02, 0.05]), label="kill after s")
    pick = data.draw(st.integers(0, 2), label="which replica")  # drawn here: never from state
    target = _write_random(tmp_path_factory.mktemp("app"), defs)
    requests = [{"x": x} for x in xs]
    expectations = [_expected(target, **fields) for fields in requests]
    compiled = load_target(target).compiled

    async def serve():
        async with Supervisor(compiled, target) as sup:
            await sup.wait_ready()
            tasks = [asyncio.ensure_future(_collect(sup.router.submit(fields))) for fields in requests]
            await asyncio.sleep(after)
            # The victim's replicas that hold a group now (soon, if none does yet), if any.
            holding: list[int] = []
            for _ in range(100):
                holding = sorted(rep.slot for rep in sup.router.core.replicas.values()
                                 if rep.stage == victim.name and rep.state == "ready" and rep.groups)
                if holding or all(t.done() for t in tasks):
                    break
                await asyncio.sleep(0.01)
            candidates = holding or list(range(victim.replicas))
            slot = candidates[pick % len(candidates)]
            sup.kill(victim.name, slot)
            got = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            story = sup.router.core.story()
            event("groups replayed" if any(e.what == "replay" for e in story)
                  else "no group open on the killed replica")
            return got

    _compare(target, requests, asyncio.run(serve()), expectations)


# -- values that cross the wire -----------------------------------------------------------------

_RECORDS_APP = '''
from __future__ import annotations

import dataclasses
from typing import Optional

import pydantic

import altoflow as af


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Shape:
    name: str
    points: list[Point]
    by_name: dict[str, Point]
    center: Optional[Point] = None


class PointModel(pydantic.BaseModel):
    x: int
    y: int


@af.stage
def shape(n: int) -> Shape:
    return Shape(f"s{n}", [Point(i, -i) for i in range(n)], {"first": Point(n, n)},
                 Point(0, 0) if n % 2 else None)


@af.stage(fanout="point")
def spread(shape: Shape):
    assert type(shape) is Shape and all(type(p) is Point for p in shape.points), shape
    yield from shape.points


@af.stage(aggregate=af.ops.collect)
def gathered(spread: Point) -> list[Point]:
    assert type(spread) is Point, spread
    return spread


@af.stage
def summary(shape: Shape, gathered: list[Point]) -> Shape:
    assert type(shape) is Shape and all(type(p) is Point for p in gathered), (shape, gathered)
    return dataclasses.replace(shape, points=[*gathered, shape.by_name["first"]])


@af.stage
def as_model(shape: Shape) -> PointModel:
    return PointModel(x=shape.by_name["first"].x, y=shape.by_name["first"].y)
'''


def test_dataclasses_between_stages_and_as_outputs_served_match_reference(tmp_path: Path) -> None:
    path = tmp_path / "records_app.py"
    path.write_text(_RECORDS_APP)
    _serve_and_compare(str(path), [{"n": n} for n in range(4)], replicas={"spread": 2})


def test_a_dataclass_output_has_the_json_of_a_pydantic_model_with_its_fields(tmp_path: Path) -> None:
    from altoflow._result import encode_event

    path = tmp_path / "records_app.py"
    path.write_text(_RECORDS_APP)
    compiled = load_target(str(path)).compiled

    async def serve():
        async with Supervisor(compiled, str(path)) as sup:
            await sup.wait_ready()
            return await asyncio.wait_for(_collect(sup.router.submit({"n": 2})), 60)

    (outputs, _events) = asyncio.run(serve())
    (shape,) = outputs["summary"].values()
    (model,) = outputs["as_model"].values()
    first = shape.by_name["first"]
    assert type(first).__name__ == "Point" and type(model).__name__ == "PointModel"
    as_json = [json.loads(encode_event(af.Event("output", "s", {}, value=v))[0])["value"]
               for v in (first, model)]
    assert as_json == [{"x": 2, "y": 2}, {"x": 2, "y": 2}]


_PLAIN_APP = '''
import altoflow as af


class Box:
    def __init__(self, v):
        self.v = v


@af.stage
def boxed(n: int):
    return Box(n)


@af.stage
def unboxed(boxed) -> int:
    return boxed.v
'''

_DEEP_APP = '''
import altoflow as af


@af.stage
def deep(n: int):
    value = []
    for _ in range(n):
        value = [value]
    return value


@af.stage
def depth(deep) -> int:
    n = 0
    while deep:
        deep, n = deep[0], n + 1
    return n
'''


def _served_events(target: str, fields: dict) -> list:
    compiled = load_target(target).compiled

    async def serve():
        async with Supervisor(compiled, target) as sup:
            await sup.wait_ready()
            return (await asyncio.wait_for(_collect(sup.router.submit(fields)), 60))[1]

    return asyncio.run(serve())


def test_a_plain_object_between_stages_names_the_stage_the_type_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "plain_app.py"
    path.write_text(_PLAIN_APP)
    last = _served_events(str(path), {"n": 3})[-1]
    assert (last.type, last.stage, last.exc_type) == ("error", "boxed", "EncodeError")
    assert last.error.startswith("stage 'boxed' returned a value that cannot be sent on: cannot "
                                 "send a value of type plain_app.Box over the wire")
    assert "make Box a dataclass" in last.error and "--allow-pickle" in last.error
    assert "decode" not in last.error


@pytest.mark.parametrize("depth", [150, 100_000])
def test_a_value_nested_past_the_codec_limit_is_a_clear_error_served(tmp_path: Path, depth: int) -> None:
    from altoflow.wire.codec import MAX_DEPTH

    path = tmp_path / "deep_app.py"
    path.write_text(_DEEP_APP)
    events = _served_events(str(path), {"n": depth})
    last = events[-1]
    assert (last.type, last.stage, last.exc_type) == ("error", "deep", "EncodeError")
    assert last.error.startswith("stage 'deep' returned a value that cannot be sent on: ")
    assert f"nested more than {MAX_DEPTH} levels deep" in last.error
    ok = _served_events(str(path), {"n": MAX_DEPTH - 1})
    assert [(e.type, e.value) for e in ok] == [("output", MAX_DEPTH - 1), ("done", None)]
