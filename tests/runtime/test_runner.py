"""The stage runner on its own: streaming versus barrier mode."""

import asyncio

from altoflow import stage
from altoflow.compiler import Pipeline
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
