"""``@stage`` records a spec, returns the function unchanged, and rejects misuse at once."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing

import pytest

import altoflow as af
from altoflow import ops, stage
from altoflow._stage import StageOptions, get_spec

# The keyword arguments of @stage(...) that code outside altoflow relies on.
CONTRACT_OPTIONS = ["fanout", "aggregate", "over", "replicas", "concurrency", "gpus", "cpus",
                    "resources", "timeout", "retries", "on_error", "name", "output"]


def test_stage_returns_the_function_unchanged():
    def answer(question: str) -> str:
        return question.upper()

    assert stage(answer) is answer
    assert stage(replicas=3)(answer) is answer
    assert answer("hi") == "HI"  # still a plain function
    spec = get_spec(answer)
    assert spec.name == "answer" and spec.replicas == 3 and spec.call_kind == "function"


def test_both_forms_and_defaults():
    @stage
    def a(x: int) -> int:
        return x

    @stage()
    async def b(a: int) -> int:
        return a

    sa, sb = get_spec(a), get_spec(b)
    assert (sa.concurrency, sb.concurrency) == (1, 64)  # sync 1, async 64
    assert sa.on_error == "fail" and sa.retries == 0 and sa.timeout is None and sa.output is None
    assert [p.name for p in sb.params] == ["a"]


def test_call_kinds():
    @stage(fanout="l1")
    def g(x):
        yield x

    @stage(fanout="l2")
    async def ag(x):
        yield x

    @stage
    async def f(x):
        return x

    kinds = [get_spec(o).call_kind for o in (g, ag, f)]
    assert kinds == ["generator", "async_generator", "async"]


def test_class_stage():
    @stage(replicas=2)
    class Scorer:
        def __init__(self):
            self.model = "loaded"

        async def __call__(self, passage: str) -> float:
            return float(len(passage))

    spec = get_spec(Scorer)
    assert spec.is_class and spec.call_kind == "async" and [p.name for p in spec.params] == ["passage"]


def test_name_override_and_options():
    @stage(name="claims", fanout="claim", timeout=2, retries=1, on_error="drop", gpus=0.5, output=True)
    def extract(answer):
        yield answer

    spec = get_spec(extract)
    assert (spec.name, spec.timeout, spec.retries, spec.on_error, spec.gpus, spec.output) == (
        "claims", 2.0, 1, "drop", 0.5, True)


def _raises(fn, *patterns):
    with pytest.raises(af.StageDefinitionError) as info:
        fn()
    msg = str(info.value)
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in {msg!r}"
    return msg


HERE = r"test_stage\.py:\d+"


def test_fanout_needs_a_generator():
    def bad():
        @stage(fanout="claim")
        def claims(answer):
            return answer.split(".")

    _raises(bad, r"'claims' \(", HERE, "not a generator", "yield")


def test_generator_needs_fanout():
    def bad():
        @stage
        def claims(answer):
            yield answer

    _raises(bad, "claims", "generator but has no fanout", r"fanout='claim'")


def test_over_without_aggregate():
    def bad():
        @stage(over="claim")
        def f(x):
            return x

    _raises(bad, "over='claim'", "no aggregate", "ops.collect")


def test_aggregate_must_be_an_operator():
    def builtin():
        @stage(aggregate=sum)
        def f(x):
            return x

    def bare_topk():
        @stage(aggregate=ops.topk)
        def f(x):
            return x

    def nonsense():
        @stage(aggregate="sum")
        def f(x):
            return x

    _raises(builtin, "builtin", r"ops\.sum")
    _raises(bare_topk, r"ops\.topk needs arguments", r"ops\.topk\(\.\.\.\)")
    _raises(nonsense, "not an operator", "Aggregator")


def test_aggregate_generator_is_rejected():
    def bad():
        @stage(aggregate=ops.collect, fanout="x")
        def f(y):
            yield y

    _raises(bad, "generator and an aggregate", "return")


def test_var_args_and_positional_only():
    def star():
        @stage
        def f(*inputs):
            return inputs

    def posonly():
        @stage
        def f(a, /):
            return a

    _raises(star, r"\*inputs", "by parameter name")
    _raises(posonly, "positional-only", "Remove the '/'")


def test_parameter_named_like_the_stage():
    def bad():
        @stage
        def answer(answer):
            return answer

    _raises(bad, "its own name", "Rename")


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"replicas": 0}, "replicas=0"),
        ({"concurrency": 0}, "concurrency=0"),
        ({"on_error": "ignore"}, "on_error='ignore'"),
        ({"retries": -1}, "retries=-1"),
        ({"timeout": 0}, "timeout=0"),
        ({"gpus": -1}, "gpus=-1"),
        ({"name": "not a name"}, "not a valid identifier"),
        ({"fanout": "two words"}, "must name the new level"),
        ({"over": 3}, "over=3 must name the level the aggregate folds away"),
        ({"concurrency": 2.5}, "concurrency=2.5 must be an int >= 1"),
        ({"cpus": "two"}, "cpus='two' must be a number >= 0"),
        ({"timeout": "5"}, "timeout='5' must be seconds > 0 or None"),
        ({"output": "yes"}, "output='yes' must be True, False or None"),
        ({"name": 7}, "name=7 is not a valid identifier"),
        ({"resources": ["retriever"]}, "resources=['retriever'] must map resource names to amounts"),
        ({"resources": {"retriever": -1}}, "resources['retriever']=-1 must be a number >= 0"),
        ({"resources": {"retriever": True}}, "resources['retriever']=True must be a number >= 0"),
        ({"resources": {"": 1}}, "resources has the key ''"),
        ({"resources": {"GPU": 1}}, "give CPUs and GPUs with gpus=..., not in resources"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    def bad():
        @stage(**{"fanout": "lvl", **kwargs} if "fanout" in kwargs else kwargs)
        def f(x):
            return x

    if "fanout" in kwargs:
        def bad():  # noqa: F811 - a generator, so that only the level name is wrong
            @stage(**kwargs)
            def f(x):
                yield x

    _raises(bad, re.escape(pattern))


def test_class_without_call_or_with_init_args():
    def no_call():
        @stage
        class Model:
            pass

    def init_args():
        @stage
        class Model:
            def __init__(self, path):
                self.path = path

            def __call__(self, x):
                return x

    _raises(no_call, "no __call__", r"def __call__")
    _raises(init_args, r"needs __init__ arguments \(path\)", "defaults")


def test_positional_argument_to_stage():
    _raises(lambda: stage("claim"), "keywords", r"fanout='claim'")


def test_options_are_the_keywords_of_the_contract_in_every_signature():
    # StageOptions, the typed overload and the implementation list the same keywords, so that
    # an option cannot be added to one and forgotten in another.
    fields = [f.name for f in dataclasses.fields(StageOptions)]
    keyword_overload = [o for o in typing.get_overloads(stage) if "fanout" in inspect.signature(o).parameters]
    assert len(keyword_overload) == 1
    overload_kw = list(inspect.signature(keyword_overload[0]).parameters)
    impl_kw = [n for n, p in inspect.signature(stage).parameters.items() if p.kind is p.KEYWORD_ONLY]
    assert fields == overload_kw == impl_kw == CONTRACT_OPTIONS
    defaults = {f.name: f.default for f in dataclasses.fields(StageOptions)}
    assert defaults == {n: p.default for n, p in inspect.signature(stage).parameters.items()
                        if p.kind is p.KEYWORD_ONLY}


def test_checked_options_are_normalised():
    checked = StageOptions(aggregate=ops.sum, timeout=2, gpus=1, cpus=2).checked("'f' (here)")
    assert isinstance(checked.aggregate, ops.Aggregator) and type(checked.aggregate) is ops.sum
    assert (checked.timeout, checked.gpus, checked.cpus) == (2.0, 1.0, 2.0)
    assert all(type(v) is float for v in (checked.timeout, checked.gpus, checked.cpus))
    assert checked.concurrency is None  # resolved by call kind once the function is known
    with pytest.raises(af.StageDefinitionError, match=r"stage 'f' \(here\): retries=-1"):
        StageOptions(retries=-1).checked("'f' (here)")


def test_an_unnamed_function_needs_a_name():
    _raises(lambda: stage(lambda x: x), "name='<lambda>' is not a valid identifier")
    spec = get_spec(stage(name="double")(lambda x: 2 * x))
    assert spec.name == "double"


def test_resources_are_recorded_sorted_and_reach_the_plan():
    @stage(resources={"tpu_slice": 2, "accelerator_type:A100": 0.01}, gpus=1)
    def lm(x: int) -> int:
        return x

    assert get_spec(lm).resources == (("accelerator_type:A100", 0.01), ("tpu_slice", 2.0))
    plan = af.Pipeline([lm]).compiled.plan
    assert plan.stage("lm").resources == {"accelerator_type:A100": 0.01, "tpu_slice": 2.0}
    assert plan.stage("lm").gpus == 1.0


def test_a_cpu_or_gpu_in_resources_shows_the_option_to_use_instead():
    with pytest.raises(af.StageDefinitionError) as info:
        @stage(resources={"CPU": 2})
        def f(x: int) -> int:
            return x
    assert "Instead of: resources={'CPU': 1}\n  write:      cpus=1" in str(info.value)
