"""What the compiler infers, and how it rejects pipelines that break its rules (edges from
parameter names, level stacks that chain, unique levels, an ``over`` that is open)."""

from __future__ import annotations

import ast
import math
import re
import typing
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import altoflow as af
from altoflow import ops, stage
from altoflow.compiler import Pipeline, load_target
from altoflow.compiler._compile import (check_joins, collect_stages, compute_route_keys,
                                        infer_level_stacks, resolve_edges)
from altoflow.compiler.plan import Plan
from altoflow.compiler.render import to_text

HERE = r"test_compiler\.py:\d+"


def compiled(*fns):
    return Pipeline(list(fns)).compiled


def test_factool_levels_kinds_and_keys():
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


# -- the steps, one at a time -----------------------------------------------------------------


def _factool_stages() -> dict:
    return collect_stages(load_target("tests/pipelines/factool.py"))


def test_resolve_edges_splits_parameters_into_inputs_and_fields():
    edges = resolve_edges(_factool_stages())
    assert edges.order == ["answer", "claims", "queries", "query_tokens", "bm25", "evidence"]
    assert edges.inputs["evidence"] == ["claims", "bm25"]
    assert [p.name for p in edges.fields["answer"]] == ["question"]
    assert edges.consumers["claims"] == ["queries", "evidence"]
    assert edges.consumers["evidence"] == []


def test_level_stacks_joins_and_keys_step_by_step():
    stages = _factool_stages()
    edges = resolve_edges(stages)
    levels = infer_level_stacks(stages, edges)
    assert levels.unjoinable is None
    assert levels.stages["bm25"].levels_in == ("claim", "query", "token")
    assert levels.stages["bm25"].over == "token"
    assert levels.stages["evidence"].over == "claim"
    joins = check_joins(stages, edges, levels)
    assert (joins["evidence"].drives, joins["evidence"].broadcasts) == (["bm25"], ["claims"])
    keys = compute_route_keys(levels)
    assert keys["bm25"] == ["claim", "query"] and keys["evidence"] == [] and keys["claims"] is None


def test_inference_stops_at_a_cross_branch_join_and_check_joins_names_it():
    # A stage below the bad join has an `over` that only the guessed stack would lack: the
    # error must be the join's, not a level error about the stage below it.
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

    @stage(aggregate=ops.collect, over="keyword")
    def grouped(mix):
        return mix

    stages = collect_stages(Pipeline([claims, queries, keywords, mix, grouped]))
    edges = resolve_edges(stages)
    levels = infer_level_stacks(stages, edges)
    assert levels.unjoinable == "mix" and set(levels.stages) == {"claims", "queries", "keywords"}
    with pytest.raises(af.LevelError, match=r"'mix' \(.*different branches"):
        check_joins(stages, edges, levels)


def test_the_compiler_modules_import_each_other_without_a_cycle():
    # Every import counts, also one inside a function: each module depends on the ones it
    # names, and none of them, through any chain, on itself.
    package = Path(af.__file__).parent / "compiler"
    modules = {f"altoflow.compiler.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    deps: dict[str, set[str]] = {}
    for m in modules:
        tree = ast.parse((package / f"{m.rpartition('.')[2]}.py").read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        deps[m] = names & modules
    assert deps["altoflow.compiler._pipeline"] >= {"altoflow.compiler._compile"}
    assert "altoflow.compiler._pipeline" not in deps["altoflow.compiler._compile"]

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(d == goal or (d not in seen and reaches(d, goal, seen | {d})) for d in deps[start])

    assert not [m for m in modules if reaches(m, m, set())]


# -- a parameter named almost like a stage ----------------------------------------------------


def _misspelt_shop(total: bool):
    @stage(fanout="item")
    def items(order: str):
        yield from order.split(",")

    @stage
    def priced(itmes):  # meant: items
        return len(itmes)

    @stage(aggregate=ops.sum)
    def cost(priced):
        return priced

    return [items, priced, cost] if total else [items, priced]


NOTE = r"stage 'priced' \(.*test_compiler\.py:\d+\) reads 'itmes', which is no stage, so it is a request field: did you mean `items`\?"


def test_a_misspelt_input_is_noted_in_the_plan_and_the_picture():
    plan = Pipeline(_misspelt_shop(total=False), name="shop").compiled.plan
    assert plan.stage("priced").fields == ["itmes"]  # still a request field
    assert plan.stage("priced").near_stages == {"itmes": "items"}
    assert plan.stage("items").near_stages == {}
    text = to_text(plan)
    assert "  ! 'itmes' is no stage, so it is a request field: did you mean `items`?\n" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_the_error_a_misspelt_input_causes_carries_the_note():
    # `cost` reads `priced`, now a source: the error names `cost`, the note names the cause.
    msg = _compile_error(*_misspelt_shop(total=True), cls=af.LevelError,
                         patterns=[r"stage 'cost' \(.*aggregates, but its input has no open level", NOTE])
    assert msg.index("'cost'") < msg.index("Note:")


def test_a_parameter_in_the_singular_of_a_stage_is_noted():
    # A parameter receives one item of a stage at a time, so the singular is an easy slip.
    @stage(fanout="claim")
    def claims(answer: str):
        yield answer

    @stage
    def verified(claim):
        return claim

    assert compiled(claims, verified).plan.stage("verified").near_stages == {"claim": "claims"}


def test_a_request_missing_the_misspelt_field_carries_the_note():
    cp = Pipeline(_misspelt_shop(total=False), name="shop").compiled
    with pytest.raises(af.InputError) as info:
        cp.validate_request({"order": "a,b"})
    assert re.search(r"itmes\s+Field required", str(info.value))
    assert re.search(NOTE, str(info.value))
    with pytest.raises(af.InputError) as info:  # the note only where its field is at fault
        cp.validate_request({"itmes": 1})
    assert "order" in str(info.value) and "did you mean" not in str(info.value)


def test_the_compile_command_prints_the_note(tmp_path):
    from typer.testing import CliRunner

    from altoflow.cli import app

    app_file = tmp_path / "shop.py"
    app_file.write_text(
        "from altoflow import stage\n\n"
        "@stage(fanout='item')\ndef items(order: str):\n    yield from order.split(',')\n\n"
        "@stage\ndef priced(itmes):\n    return len(itmes)\n"
    )
    result = CliRunner().invoke(app, ["compile", str(app_file)])
    assert result.exit_code == 0, result.output
    assert "! 'itmes' is no stage, so it is a request field: did you mean `items`?" in result.stdout


def test_names_that_are_not_misspellings_get_no_note():
    @stage(fanout="claim")
    def claims(answer: str):
        yield answer

    @stage
    def verify(claims, claim_style: str, claim: int = 0):  # reads `claims` already
        return claims

    @stage(fanout="subquestion")
    def subquestions(question: str):  # a longer name containing the field
        yield question

    @stage
    def summary(subquestions):
        return subquestions

    plan = compiled(claims, verify, subquestions, summary).plan
    assert all(s.near_stages == {} for s in plan.stages)
    assert "did you mean" not in to_text(plan)
    for target in ("tests/pipelines/factool.py", "tests/pipelines/twelve.py:pipeline",
                   "examples/helpsearch.py"):
        assert load_target(target).compiled.plan.near_stage_notes() == [], target


# -- annotations the wire cannot carry -------------------------------------------------------------


class Opaque:
    """A plain class: its instances have no form on the wire."""


@__import__("dataclasses").dataclass
class Record:
    text: str


@pytest.mark.parametrize(
    ("where_", "make"),
    [
        ("return annotation is test_compiler.Opaque", lambda: _returns(Opaque)),
        ("return annotation is list[test_compiler.Opaque]", lambda: _returns(list[Opaque])),
        ("return annotation is Iterator[dict[str, test_compiler.Opaque | None]]",
         lambda: _yields(typing.Iterator[dict[str, Opaque | None]])),
        ("parameter 'text' is test_compiler.Opaque", lambda: _takes(Opaque)),
    ],
)
def test_an_annotation_the_wire_cannot_carry_is_a_compile_error(where_: str, make) -> None:
    msg = _compile_error(make(), patterns=[
        r"^stage 'opaque' \(.*test_compiler\.py:\d+\): its " + re.escape(where_),
        r"and not test_compiler\.Opaque\. Fix: make Opaque a dataclass \(@dataclasses\.dataclass\) "
        r"or a pydantic model, or annotate with a type the codec carries \(e\.g\. dict\); to send "
        r"it pickled instead \(`altoflow serve --allow-pickle`, local replicas only\), leave the "
        r"annotation off\.$",
    ])
    assert "dataclasses, attrs classes, pydantic models" in msg


@pytest.mark.parametrize("hint", [Record, list[Record], dict[str, Record | None], typing.Any, object,
                                  typing.Iterable[int], typing.Literal["a"], tuple[int, ...]])
def test_annotations_the_wire_can_carry_or_may_carry_compile(hint) -> None:
    assert compiled(_returns(hint)).plan.names == ["opaque"]
    assert compiled(_takes(hint)).plan.names == ["opaque"]


def test_an_unresolved_return_annotation_is_not_judged() -> None:
    assert compiled(_returns("Undefined")).plan.names == ["opaque"]


def _returns(hint):
    def opaque(text: str):
        return text
    opaque.__annotations__["return"] = hint
    return stage(opaque)


def _yields(hint):
    def opaque(text: str):
        yield text
    opaque.__annotations__["return"] = hint
    return stage(fanout="piece")(opaque)


def _takes(hint):
    def opaque(text):
        return text
    opaque.__annotations__["text"] = hint
    return stage(opaque)
