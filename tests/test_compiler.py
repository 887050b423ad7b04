"""What the compiler infers, and how it rejects pipelines that break design section 3."""

from __future__ import annotations

import math
import re
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

import altoflow as af
from altoflow import ops, stage
from altoflow.compiler import Pipeline, load_target
from altoflow.compiler.plan import Plan

HERE = r"test_compiler\.py:\d+"


def compiled(*fns):
    return Pipeline(list(fns)).compiled


def test_design_example_levels_kinds_and_keys():
    plan = load_target("tests/pipelines/factool.py").compiled.plan
    s = {st.name: st for st in plan.stages}
    assert plan.names == ["answer", "claims", "queries", "query_tokens", "bm25", "evidence"]
    assert s["answer"].kind == "source" and s["answer"].fields == ["question"]
    assert s["claims"].levels_out == ["claim"]
    assert s["query_tokens"].levels_out == ["claim", "query", "token"]
    assert s["bm25"].kind == "aggregate"
    assert (s["bm25"].levels_in, s["bm25"].levels_out) == (["claim", "query", "token"], ["claim", "query"])
    assert s["bm25"].route_key == ["claim", "query"]  # the paper's [obj_id, claim_id, query_id]
    assert s["evidence"].kind == "aggregate" and s["evidence"].route_key == []
    assert s["evidence"].drives == ["bm25"] and s["evidence"].broadcasts == ["claims"]
    assert s["queries"].route_key is None and s["queries"].replicas == 3
    assert [st.name for st in plan.outputs] == ["evidence"]
    assert plan.levels == {"claim": "claims", "query": "queries", "token": "query_tokens"}


def test_contract_json():
    plan = load_target("tests/pipelines/factool.py").compiled.plan
    doc = plan.contract_json()
    assert set(doc) == {"stages"}
    for entry in doc["stages"]:
        assert set(entry) == {"name", "kind", "inputs", "levels_in", "levels_out", "route_key", "replicas"}
    assert doc["stages"][-1] == {
        "name": "evidence", "kind": "aggregate", "inputs": ["claims", "bm25"],
        "levels_in": ["claim", "query"], "levels_out": [], "route_key": [], "replicas": 1,
    }


def test_plan_round_trips_through_json():
    plan = load_target("tests/pipelines/factool.py").compiled.plan
    assert Plan.model_validate_json(plan.model_dump_json()) == plan
    assert plan.target == "tests/pipelines/factool.py"


def test_request_schema_from_annotations():
    @stage
    def a(question: str, k: int = 3) -> str:
        return question * k

    @stage
    def b(a: str, k: int = 3, lang: typing.Optional[str] = None) -> str:
        return a

    cp = compiled(a, b)
    assert cp.validate_request({"question": "q"}) == {"question": "q", "k": 3, "lang": None}
    assert cp.validate_request({"question": "q", "k": "5"})["k"] == 5  # pydantic coerces
    with pytest.raises(af.InputError, match="question"):
        cp.validate_request({})
    with pytest.raises(af.InputError, match="Extra inputs|extra"):
        cp.validate_request({"question": "q", "qestion": "typo"})
    with pytest.raises(af.InputError, match="k"):
        cp.validate_request({"question": "q", "k": "many"})
    assert set(cp.plan.request_schema["properties"]) == {"question", "k", "lang"}


def test_kinds():
    @stage
    def src(x):
        return x

    @stage
    def m(src):
        return src

    @stage
    def other(src):
        return src

    @stage
    def j(m, other):
        return m

    plan = compiled(src, m, other, j).plan
    assert [(s.name, s.kind) for s in plan.stages] == [
        ("src", "source"), ("m", "map"), ("other", "map"), ("j", "join")]
    assert plan.stage("j").drives == ["m", "other"]


def test_aggregate_fanout_levels():
    @stage(fanout="doc")
    def docs(q):
        yield q

    @stage(aggregate=ops.topk(2), fanout="best")
    def best(docs):
        return docs

    @stage
    def use(best):
        return best

    plan = compiled(docs, best, use).plan
    assert plan.stage("best").levels_out == ["best"] and plan.stage("best").route_key == []
    assert plan.stage("use").levels_in == ["best"]


def test_over_an_outer_level_folds_the_inner_ones():
    @stage(fanout="a")
    def xs(q):
        yield q

    @stage(fanout="b")
    def ys(xs):
        yield xs

    @stage(aggregate=ops.count, over="a")
    def n(ys):
        return ys

    plan = compiled(xs, ys, n).plan
    assert plan.stage("n").levels_out == [] and plan.stage("n").route_key == []


def _compile_error(*fns, patterns=(), cls=af.CompileError):
    with pytest.raises(cls) as info:
        compiled(*fns)
    msg = str(info.value)
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in {msg!r}"
    return msg


def test_cross_branch_join_is_rejected():
    @stage(fanout="claim")
    def claims(answer):
        yield answer

    @stage(fanout="query")
    def queries(claims):
        yield claims

    @stage(fanout="keyword")
    def keywords(claims):
        yield claims

    @stage
    def mix(queries, keywords):
        return queries

    _compile_error(
        claims, queries, keywords, mix, cls=af.LevelError,
        patterns=[r"'mix' \(", HERE, r"\[claim/query\]", r"\[claim/keyword\]",
                  "different branches", "Aggregate one of them first", r"ops\.collect"],
    )


def test_cycle_is_rejected():
    @stage
    def a(b):
        return b

    @stage
    def b(a):
        return a

    _compile_error(a, b, cls=af.GraphError, patterns=["cycle", "a -> b -> a|b -> a -> b", HERE, "rename"])


def test_unknown_over_level():
    @stage(fanout="claim")
    def claims(answer):
        yield answer

    @stage(aggregate=ops.collect, over="clam")
    def all_claims(claims):
        return claims

    _compile_error(claims, all_claims, cls=af.LevelError,
                   patterns=["over='clam'", "not an open level", r"\[claim\]", "'claim'", HERE])


def test_over_a_level_open_elsewhere():
    @stage(fanout="claim")
    def claims(answer):
        yield answer

    @stage(fanout="other")
    def others(answer):
        yield answer

    @stage(aggregate=ops.collect, over="other")
    def grouped(claims):
        return claims

    _compile_error(claims, others, grouped, patterns=["opened by 'others' but is not open here"])


def test_level_opened_twice():
    @stage(fanout="item")
    def a(x):
        yield x

    @stage(fanout="item")
    def b(a):
        yield a

    _compile_error(a, b, cls=af.LevelError, patterns=["opens level 'item'", "unique", "fanout='item_b'"])


def test_aggregate_without_open_level():
    @stage(aggregate=ops.sum)
    def total(x):
        return x

    _compile_error(total, patterns=["no open level", "fanout"])


def test_duplicate_names():
    @stage(name="same")
    def a(x):
        return x

    @stage(name="same")
    def b(x):
        return x

    _compile_error(a, b, cls=af.GraphError, patterns=["two stages are named 'same'", "name="])


def test_no_output():
    @stage(output=False)
    def a(x):
        return x

    _compile_error(a, patterns=["no output stage", "output=True"])


def test_conflicting_field_types():
    @stage
    def a(n: int):
        return n

    @stage
    def b(a, n: str):
        return a

    _compile_error(a, b, patterns=["request field 'n' has two types", "int", "str"])


def test_empty_pipeline_and_non_stage():
    _compile_error(patterns=["no stages"])

    def plain(x):
        return x

    with pytest.raises(af.GraphError, match="not a stage: decorate it with @stage"):
        Pipeline([plain])


def test_target_errors():
    with pytest.raises(af.TargetError, match="no such file"):
        load_target("does/not/exist.py")
    with pytest.raises(af.TargetError, match="has no attribute 'nope'"):
        load_target("tests/pipelines/factool.py:nope")
    with pytest.raises(af.TargetError, match="no module named"):
        load_target("no_such_pkg_xyz.mod:p")
    with pytest.raises(af.TargetError, match="a Pipeline, a module, or a string"):
        load_target(42)


def test_from_module_collects_stages_in_definition_order():
    import importlib

    mod = load_target("tests/pipelines/factool.py").compiled.plan
    p = Pipeline.from_module(importlib.import_module(
        [m for m in __import__("sys").modules if m.startswith("factool_")][0]))
    assert [s.name for s in p.specs] == mod.names


def _plain_pipeline() -> typing.Any:
    @stage
    def a(s: str, b: bytes, i: int, f: float) -> str:
        return s

    @stage
    def z(a: str, flag: bool, anything: typing.Any, k: int = 3) -> str:
        return a

    return Pipeline([a, z], name="plain").compiled


_values = st.one_of(st.text(max_size=3), st.binary(max_size=3), st.integers(), st.floats(allow_nan=False),
                    st.booleans(), st.none(), st.lists(st.integers(), max_size=2))


@st.composite
def _requests(draw: st.DrawFn) -> dict:
    # Mostly well-typed requests (the fast path), some with one value of another type, a
    # missing field or an unknown one (pydantic's path), so that both are exercised.
    fields = {"s": draw(st.text(max_size=3)), "b": draw(st.binary(max_size=3)), "i": draw(st.integers()),
              "f": draw(st.floats()), "flag": draw(st.booleans()), "anything": draw(_values),
              "k": draw(st.integers())}
    change = draw(st.sampled_from(["none", "none", "retype", "drop", "add"]))
    name = draw(st.sampled_from(sorted(fields)))
    if change == "retype":
        fields[name] = draw(_values)
    elif change == "drop":
        del fields[name]
    elif change == "add":
        fields["extra"] = draw(_values)
    return fields


@given(_requests())
def test_the_plain_field_fast_path_validates_as_pydantic_does(fields: dict) -> None:
    # Requests whose fields all have their exact plain types skip pydantic; the result (or the
    # refusal) must be the same as pydantic's.
    cp = _plain_pipeline()
    try:
        model = cp.request_model.model_validate(fields)
    except Exception:
        with pytest.raises(af.InputError):
            cp.validate_request(fields)
        return
    expected = {name: getattr(model, name) for name in type(model).model_fields}
    got = cp.validate_request(fields)
    assert list(got) == list(expected)
    for name in expected:  # NaN != NaN: compare what each value is, and its type
        same = got[name] == expected[name] or (isinstance(got[name], float) and math.isnan(got[name])
                                               and math.isnan(expected[name]))
        assert same, name
        assert type(got[name]) is type(expected[name]), name
