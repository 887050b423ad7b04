"""Random pipelines through ``altoflow.run`` against the naive evaluator in ``oracle.py``."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import altoflow as af
from oracle import evaluate
from randompipes import build, pipelines


def _outputs(result: af.Result, pipeline: af.Pipeline) -> dict:
    plan = pipeline.compiled.plan
    out = {}
    for s in plan.outputs:
        out[s.name] = {tuple(a.values()): v for a, v in result.items_with_ancestry(s.name)}
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pipelines(), x=st.integers(0, 50))
def test_reference_executor_matches_naive_evaluator(case, x):
    defs, stacks = case
    pipeline = build(defs)
    plan = pipeline.compiled.plan
    # The compiler's level stacks agree with the ones the generator derived by hand.
    assert {s.name: s.levels_out for s in plan.stages} == stacks

    expected = asyncio.run(evaluate(build(defs), x=x))
    if expected.errors:
        with pytest.raises(af.StageError) as info:
            af.run(pipeline, x=x)
        err = info.value
        assert (err.stage, tuple(err.ancestry.items())) in expected.errors
        assert err.__cause__ is not None
        return
    result = af.run(pipeline, x=x)
    assert _outputs(result, pipeline) == expected.outputs
    # Events are exactly the outputs, once each.
    assert len(result.events) == sum(len(v) for v in expected.outputs.values())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pipelines(errors=False), x=st.integers(0, 50))
def test_every_item_is_processed_exactly_once(case, x):
    defs, _ = case
    expected_calls: Counter = Counter()
    asyncio.run(evaluate(build(defs, expected_calls), x=x))
    calls: Counter = Counter()
    af.run(build(defs, calls), x=x)
    assert calls == expected_calls
    assert sum(calls.values()) >= 1  # every pipeline has a source that runs once
