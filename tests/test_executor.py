"""Behaviour of the in-process reference executor that users rely on."""

from __future__ import annotations

import asyncio
import threading
import time

import anyio
import pytest

import altoflow as af
from altoflow import DROP, ops, stage

def P(*fns):
    return af.Pipeline(list(fns))


def test_fanout_items_flow_on_while_the_generator_runs():
    # The generator waits, after its first item, for the consumer to have processed that
    # item. Only an executor that streams can finish this; one that waits deadlocks.
    seen = asyncio.Event()

    @stage(fanout="claim")
    async def claims(text: str):
        yield "first"
        await asyncio.wait_for(seen.wait(), timeout=5)
        yield "second"

    @stage
    async def checked(claims: str) -> str:
        if claims == "first":
            seen.set()
        return claims.upper()

    result = af.run(P(claims, checked), text="x")
    assert result["checked"] == ["FIRST", "SECOND"]
    assert [e.ancestry for e in result.events] == [{"claim": 0}, {"claim": 1}]


def test_sync_stages_run_off_the_event_loop():
    loop_thread = []

    @stage
    async def marker(x: int) -> int:
        loop_thread.append(threading.get_ident())
        return x

    @stage
    def blocking(marker: int) -> int:
        assert threading.get_ident() != loop_thread[0]
        return marker + 1

    assert af.run(P(marker, blocking), x=1)["blocking"] == 2


def test_async_concurrency_limit():
    active = 0
    peak = 0

    @stage(fanout="i")
    def items(n: int):
        yield from range(n)

    @stage(concurrency=3)
    async def work(items: int) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        return items

    assert af.run(P(items, work), n=12)["work"] == list(range(12))
    assert peak == 3


def test_class_stage_initialised_once():
    inits = []

    @stage
    class Doubler:
        def __init__(self):
            inits.append(1)
            self.factor = 2

        def __call__(self, x: int) -> int:
            return x * self.factor

    pipeline = P(Doubler)
    assert af.run(pipeline, x=2)["Doubler"] == 4
    assert af.run(pipeline, x=5)["Doubler"] == 10
    assert len(inits) == 1


def test_class_init_failure_is_a_stage_error():
    @stage
    class Broken:
        def __init__(self):
            raise OSError("no model file")

        def __call__(self, x):
            return x

    with pytest.raises(af.StageError, match="__init__ failed: OSError: no model file"):
        af.run(P(Broken), x=1)


def test_empty_groups_emit_the_identity():
    @stage(fanout="w")
    def words(text: str):
        yield from text.split()

    @stage(aggregate=ops.count)
    def n(words):
        return words

    @stage(aggregate=ops.collect)
    def all_words(words):
        return words

    @stage(aggregate=ops.max)
    def longest(words):
        return len(words)

    r = af.run(P(words, n, all_words, longest), text="")
    assert (r["n"], r["all_words"], r["longest"]) == (0, [], None)


def test_drop_closes_groups_and_joins_give_up():
    @stage(fanout="i")
    def items(n: int):
        yield from range(n)

    @stage
    def odd(items: int):
        return items if items % 2 else DROP

    @stage
    def square(items: int) -> int:
        return items * items

    @stage
    def pair(odd: int, square: int) -> tuple:
        return (odd, square)

    @stage(aggregate=ops.collect)
    def pairs(pair):
        return pair

    r = af.run(P(items, odd, square, pair, pairs), n=5)
    assert r["pairs"] == [(1, 1), (3, 9)]


def test_broadcast_of_a_shallower_input():
    @stage
    def answer(q: str) -> str:
        return q.upper()

    @stage(fanout="c")
    def claims(answer: str):
        yield from answer.split()

    @stage
    def tagged(claims: str, answer: str) -> str:
        return f"{claims}<{len(answer)}>"

    assert af.run(P(answer, claims, tagged), q="a bc")["tagged"] == ["A<4>", "BC<4>"]


def test_failure_ends_the_request_with_stage_error():
    @stage(fanout="c")
    def claims(text: str):
        yield from text.split(",")

    @stage
    def parse(claims: str) -> int:
        return int(claims)

    with pytest.raises(af.StageError) as info:
        af.run(P(claims, parse), text="1,x,3")
    err = info.value
    assert err.stage == "parse" and err.ancestry == {"c": 1}
    assert isinstance(err.__cause__, ValueError)
    assert "stage 'parse' failed on c=1: ValueError" in str(err)


def test_retries_keep_only_the_successful_result():
    attempts = []

    @stage(retries=2)
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return x * 10

    assert af.run(P(flaky), x=4)["flaky"] == 40
    assert len(attempts) == 3


def test_generator_is_not_retried_after_it_has_yielded():
    runs = []

    @stage(fanout="c", retries=3, on_error="drop")
    def claims(x: int):
        runs.append(1)
        yield 1
        raise RuntimeError("stream broke")

    @stage
    def seen(claims):
        return claims

    @stage(aggregate=ops.count, over="c")
    def n(claims):
        return claims

    r = af.run(P(claims, seen, n), x=0)
    assert len(runs) == 1
    assert r["seen"] == [1]  # it streamed on before the failure
    with pytest.raises(KeyError, match="produced no value"):
        r["n"]  # the failed fan-out opened no group


def test_timeout():
    @stage(timeout=0.05)
    async def slow(x: int) -> int:
        await asyncio.sleep(5)
        return x

    with pytest.raises(af.StageError) as info:
        af.run(P(slow), x=1)
    assert isinstance(info.value.__cause__, TimeoutError)

    @stage(timeout=0.05, on_error="drop")
    def slow_sync(x: int) -> int:
        time.sleep(0.5)
        return x

    @stage(output=True)
    def fast(x: int) -> int:
        return x

    r = af.run(P(slow_sync, fast), x=3)
    assert r["fast"] == 3
    with pytest.raises(KeyError):
        r["slow_sync"]


def test_decided_operator_emits_before_the_group_closes():
    release = None

    @stage(fanout="i")
    async def items(n: int):
        for i in range(n):
            yield i

    @stage(output=True)
    async def slow(items: int) -> int:
        if items == 3:
            await asyncio.wait_for(release.wait(), 5)
        return items

    @stage(aggregate=ops.any(lambda v: v == 0))
    async def has_zero(items: int) -> int:
        if items == 0:
            release.set()  # the last item may finish only after the answer is out
        return items

    async def main():
        nonlocal release
        release = asyncio.Event()
        order = []
        from altoflow.runtime.local import execute

        await execute(P(items, slow, has_zero).compiled, {"n": 4},
                      on_event=lambda e: order.append((e.type, e.stage, e.ancestry)))
        return order

    order = asyncio.run(main())
    assert order.index(("output", "has_zero", {})) < order.index(("output", "slow", {"i": 3}))


def test_invalid_request():
    @stage
    def a(n: int) -> int:
        return n

    with pytest.raises(af.InputError, match="n"):
        af.run(P(a), n="lots")


def test_run_inside_an_event_loop_says_use_arun():
    @stage
    def a(n: int) -> int:
        return n + 1

    async def main():
        with pytest.raises(RuntimeError, match="await altoflow.arun"):
            af.run(P(a), n=1)
        return await af.arun(P(a), n=1)

    assert anyio.run(main)["a"] == 2


def test_result_mapping_and_events():
    @stage(fanout="c")
    def cs(text: str):
        yield from text

    @stage(output=True)
    def upper(cs: str) -> str:
        return cs.upper()

    @stage(aggregate=ops.concat())
    def joined(upper: str) -> str:
        return upper

    r = af.run(P(cs, upper, joined), text="abc")
    assert dict(r) == {"upper": ["A", "B", "C"], "joined": "ABC"}
    assert r.items_with_ancestry("upper")[1] == ({"c": 1}, "B")
    assert r.events[0]["type"] == "output" and r.events[0].stage in ("upper", "joined")
    assert {e.to_json()["stage"] for e in r.events} == {"upper", "joined"}
    with pytest.raises(KeyError, match="not an output stage"):
        r["cs"]


def test_an_aggregate_that_fails_when_its_group_is_decided_early_fails_the_request():
    # ops.any is decided by its first True, so the group emits as soon as it opens; a result
    # that cannot fan out then fails there, before any flush, and must not be lost.
    @stage(fanout="item")
    def items(n: int):
        yield from range(n)

    @stage(aggregate=ops.any, fanout="bit")
    def anybit(items: int) -> bool:
        return items > 0

    with pytest.raises(af.StageError, match="anybit.*cannot fan out on level 'bit'"):
        af.run(P(items, anybit), n=3)
