"""The stage runner on its own: streaming versus barrier mode."""

import asyncio
import threading

from altoflow import stage
from altoflow.compiler import Pipeline
from altoflow.runtime import runner as runner_module
from altoflow.runtime.runner import StageRunner


def _runner(barrier: bool):
    emitted = []
    seen_while_running = []

    @stage(fanout="claim")
    async def claims(text: str):
        for i, part in enumerate(text.split()):
            seen_while_running.append(len(emitted))  # what had left before this yield
            yield part
            await asyncio.sleep(0)

    compiled = Pipeline([claims]).compiled
    runner = StageRunner(compiled.specs["claims"], compiled.plan.stage("claims"), claims,
                         lambda anc, v: emitted.append((anc, v)), barrier=barrier)
    status = asyncio.run(runner.invoke((0,), {"text": "a b c"}))
    return status, emitted, seen_while_running


def test_streaming_sends_each_item_as_it_is_yielded():
    status, emitted, seen = _runner(barrier=False)
    assert status == ("ok", None)
    assert emitted == [((0, 0), "a"), ((0, 1), "b"), ((0, 2), "c")]
    assert seen == [0, 1, 2]


def test_barrier_holds_items_until_the_invocation_returns():
    status, emitted, seen = _runner(barrier=True)
    assert status == ("ok", None)
    assert emitted == [((0, 0), "a"), ((0, 1), "b"), ((0, 2), "c")]  # the same items
    assert seen == [0, 0, 0]  # but none left while the generator ran



# -- where a sync stage's calls run ----------------------------------------------------------
# The runner decides from how long calls take; these tests set the threshold instead of timing
# anything: INLINE_BELOW_S = 1 hour makes every call fast, 0 makes every call slow.

FAST, SLOW = 3600.0, 0.0
N = runner_module.INLINE_AFTER


def _on_loop(monkeypatch, below_s, calls, *, timeout=None, generator=False):
    """For each call of a sync stage over ``calls`` invocations: did it run on the loop's thread?"""
    monkeypatch.setattr(runner_module, "INLINE_BELOW_S", below_s)
    threads = []

    if generator:
        @stage(fanout="part", timeout=timeout)
        def split(text: str):
            for part in text.split():
                threads.append(threading.get_ident())
                yield part
        expected = [x for i in range(calls) for x in (((i, 0), "a"), ((i, 1), "b"))]
    else:
        @stage(timeout=timeout)
        def split(text: str) -> str:
            threads.append(threading.get_ident())
            return text.upper()
        expected = [((i,), "A B") for i in range(calls)]

    compiled = Pipeline([split]).compiled
    emitted = []
    runner = StageRunner(compiled.specs["split"], compiled.plan.stage("split"), split,
                         lambda anc, v: emitted.append((anc, v)))

    async def main():
        for i in range(calls):
            assert await runner.invoke((i,), {"text": "a b"}) == ("ok", None)
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert emitted == expected  # wherever the calls ran, the outputs are the same
    return [t == loop_thread for t in threads]


def test_fast_sync_calls_move_onto_the_event_loop_after_a_few(monkeypatch):
    assert _on_loop(monkeypatch, FAST, N + 3) == [False] * N + [True] * 3


def test_slow_sync_calls_stay_in_threads(monkeypatch):
    assert _on_loop(monkeypatch, SLOW, N + 3) == [False] * (N + 3)


def test_a_sync_stage_with_a_timeout_always_runs_in_threads(monkeypatch):
    assert not any(_on_loop(monkeypatch, FAST, N + 3, timeout=10))


def test_a_fast_sync_generator_moves_onto_the_loop(monkeypatch):
    # Each next() is a call: two items, then the end, per invocation; the thread records the
    # items only, so the first invocation's two items ran in threads and the rest on the loop.
    on_loop = _on_loop(monkeypatch, FAST, N, generator=True)
    assert len(on_loop) == 2 * N
    assert on_loop[:2] == [False, False] and all(on_loop[N:])


def test_one_slow_inline_call_sends_the_next_ones_back_to_threads(monkeypatch):
    threads = []

    @stage
    def work(x: int) -> int:
        threads.append(threading.get_ident())
        if x == N:  # the first inline call: from here on every call counts as slow
            monkeypatch.setattr(runner_module, "INLINE_BELOW_S", SLOW)
        return x

    monkeypatch.setattr(runner_module, "INLINE_BELOW_S", FAST)
    compiled = Pipeline([work]).compiled
    runner = StageRunner(compiled.specs["work"], compiled.plan.stage("work"), work, lambda a, v: None)

    async def main():
        for i in range(N + 2):
            assert await runner.invoke((i,), {"x": i}) == ("ok", None)
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert [t == loop_thread for t in threads] == [False] * N + [True, False]


def test_an_inline_sync_generator_lets_other_tasks_run(monkeypatch):
    monkeypatch.setattr(runner_module, "INLINE_BELOW_S", FAST)
    ticks = []

    @stage(fanout="i")
    def count(n: int):
        for i in range(n):
            yield len(ticks)

    compiled = Pipeline([count]).compiled
    emitted = []
    runner = StageRunner(compiled.specs["count"], compiled.plan.stage("count"), count,
                         lambda anc, v: emitted.append(v))
    runner.fast_calls = N  # already inline

    async def main():
        async def ticker():
            while True:
                ticks.append(None)
                await asyncio.sleep(0)
        task = asyncio.get_running_loop().create_task(ticker())
        await asyncio.sleep(0)
        assert await runner.invoke((0,), {"n": 4 * runner_module.INLINE_YIELD_EVERY}) == ("ok", None)
        task.cancel()

    asyncio.run(main())
    assert len(emitted) == 4 * runner_module.INLINE_YIELD_EVERY
    assert emitted[-1] > emitted[0]  # the ticker ran while the generator did


# -- a sync call that a cancel abandons ------------------------------------------------------


def test_threads_busy_counts_an_abandoned_sync_call_until_it_ends():
    # A replica whose router goes exits without waiting for such a call (run_worker).
    release = threading.Event()

    @stage
    def held(text: str) -> str:
        release.wait(30)
        return text

    compiled = Pipeline([held]).compiled
    runner = StageRunner(compiled.specs["held"], compiled.plan.stage("held"), held,
                         lambda anc, v: None)

    async def main():
        task = asyncio.ensure_future(runner.invoke((0,), {"text": "a"}))
        while runner.threads_busy == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # abandoned: it returns at once
        busy = runner.threads_busy
        release.set()
        for _ in range(500):
            if runner.threads_busy == 0:
                break
            await asyncio.sleep(0.01)
        return busy

    assert asyncio.run(main()) == 1
    assert runner.threads_busy == 0
