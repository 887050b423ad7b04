"""A fast sync generator begun with no task (``StageRunner.fan_out_now``), on inline replicas.

Once a sync generator's calls run on the loop's thread, a served inline replica pulls its items
at once, where the input arrives, and only makes a task when the invocation has to wait: for
credit (more items than the window), at a checkpoint (every ``INLINE_YIELD_EVERY`` items), or
for a thread (a slow call). What a request gets must not change: every case is served, fused
into its aggregate and not, and compared with ``altoflow.run``; the counts show that both ends
of the path (done at once, handed to a task) ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from pathlib import Path

import pytest

import altoflow as af
from altoflow.compiler import load_target
from altoflow.runtime import runner as runner_module
from altoflow.runtime.fusion import FusedRunner
from altoflow.runtime.local import execute
from altoflow.runtime.runner import StageRunner
from altoflow.runtime.supervisor import Supervisor
from altoflow.wire import FANOUT_WINDOW

pytestmark = pytest.mark.timeout(120)

APP = """
import time

import altoflow as af
from altoflow import ops, stage

FAILED_ONCE = set()


@stage(fanout="piece", retries=1, on_error={on_error!r})
def pieces(spec: str):
    # spec: "N:HOW:TAG", N items and HOW: "slowK" (item K takes a while), "failK" (raises at
    # item K), "onceK" (raises at item K on the spec's first attempt only), "dropK" (item K is
    # DROP), or nothing. TAG makes each request's spec its own (FAILED_ONCE is per process).
    n, how, _ = spec.split(":")
    for i in range(int(n)):
        if how == f"slow{{i}}":
            time.sleep(0.002)
        if how == f"fail{{i}}":
            raise RuntimeError(f"piece {{i}} broke")
        if how == f"once{{i}}" and spec not in FAILED_ONCE:
            FAILED_ONCE.add(spec)
            raise RuntimeError(f"piece {{i}} broke once")
        if how == f"drop{{i}}":
            yield af.DROP
            continue
        af.partial(str(i))
        yield i


@stage(aggregate=ops.sum, replicas=2)
def total(pieces: int) -> int:
    return pieces + 1
"""

# Long enough to need credit beyond the window and several checkpoints, short, and each way
# an attempt can end. "once" fails its first attempt after items have gone on in one case
# (no retry: the request fails) and before any has in the other (retried, and fine).
SPECS = ["3:", "0:", "1:", f"{FANOUT_WINDOW * 3 + 5}:", "40:", "12:slow5", "12:fail7", "12:once0",
         "12:once4", "12:drop3", "70:slow40", "5:", "6:", "7:"]


def _app(tmp_path: Path, on_error: str) -> str:
    path = tmp_path / f"fan_now_{on_error}.py"
    path.write_text(textwrap.dedent(APP.format(on_error=on_error)))
    return str(path)


def _reference(target: str, spec: str) -> tuple:
    try:
        return ("result", af.run(target, spec=spec + "-reference").to_dict())
    except af.StageError as err:
        return ("error", err.stage, dict(err.ancestry))


def _deltas(events: list) -> str:
    return "".join(e.delta for e in events if e.type == "partial")


def _outcome(events: list, levels: dict) -> tuple:
    last = events[-1]
    if last.type == "error":
        return ("error", last.stage, dict(last.ancestry))
    return ("result", af.Result(events, levels).to_dict())


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("on_error", ["fail", "drop"])
def test_a_fast_sync_generator_begun_at_once_gives_what_altoflow_run_gives(
        tmp_path, monkeypatch, fuse, on_error) -> None:
    monkeypatch.setattr(runner_module, "INLINE_BELOW_S", 0.001)  # time.sleep(0.002) is slow
    target = _app(tmp_path, on_error)
    began: list[str] = []  # per fan_out_now call: "done" at once, or "task"
    runner_type = FusedRunner if fuse else StageRunner
    begin = runner_type.fan_out_now

    def counted(self, anc, kwargs):
        outcome = begin(self, anc, kwargs)
        began.append("done" if type(outcome) is tuple else "task")
        return outcome

    monkeypatch.setattr(runner_type, "fan_out_now", counted)
    compiled = load_target(target).compiled

    async def main():
        async with Supervisor(compiled, target, inline=frozenset({"all"}), fuse=fuse) as sup:
            await sup.wait_ready()
            assert sup.fused == ({"pieces": "total"} if fuse else {})

            async def one(spec: str, partials: bool):
                return [e async for e in sup.router.submit({"spec": spec}, partials=partials)]

            for tag in ["a", "b"]:  # a few fast calls: the generator's next ones run inline
                await one(f"4::{tag}", False)
            alone = [f"{spec}:alone" for spec in SPECS]
            together = [f"{spec}:{k}" for k in range(2) for spec in SPECS]
            runs = [await one(spec, True) for spec in alone]  # one at a time
            runs += await asyncio.wait_for(asyncio.gather(*(one(s, True) for s in together)), 60)
            return zip(alone + together, runs)

    levels = {s.name: s.levels_out for s in compiled.plan.outputs}
    for spec, events in asyncio.run(main()):
        assert _outcome(events, levels) == _reference(target, spec), spec
        # The partials of every item that streamed, as the reference executor streams them.
        seen: list = []
        with contextlib.suppress(af.StageError):
            asyncio.run(execute(compiled, {"spec": spec + "-events"}, on_event=seen.append))
        assert _deltas(events) == _deltas(seen), spec
    assert "done" in began and "task" in began
