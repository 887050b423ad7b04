"""``@stage`` records a spec, returns the function unchanged, and rejects misuse at once."""

from __future__ import annotations

import re

import pytest

import altoflow as af
from altoflow import ops, stage
from altoflow._stage import get_spec


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
