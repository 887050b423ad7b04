"""Fusion (altoflow.runtime.fusion): an inline fan-out folds its items into its aggregate itself.

What a request gets must not change: each case is served fused and compared with
``altoflow.run``, and the router's item counts show that the fan-out's items never reached it.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
from pathlib import Path

import pytest

import altoflow as af
from altoflow.compiler import load_target
from altoflow.runtime.fusion import fusable
from altoflow.runtime.local import execute
from altoflow.runtime.supervisor import Supervisor

APP = """
from altoflow import ops, stage, DROP


@stage(fanout="word")
def words(text: str):
    for w in text.split():
        if w == "BOOM":
            raise RuntimeError("the fan-out broke")
        yield w


@stage(aggregate=ops.sum, replicas=2, on_error={on_error!r})
{async_}def score(words: str) -> int:
    if words == "bad":
        raise ValueError(f"cannot score {{words!r}}")
    if words == "skip":
        return DROP
    return len(words)


@stage
def report(text: str, score: int) -> dict:
    return {{"text": text, "score": score}}
"""


def _app(tmp_path: Path, on_error: str = "fail", is_async: bool = False) -> str:
    path = tmp_path / f"app_{on_error}_{int(is_async)}.py"
    path.write_text(textwrap.dedent(APP.format(on_error=on_error, async_="async " if is_async else "")))
    return str(path)


async def _serve(target: str, texts: list[str], *, fuse: bool = True, barrier: bool = False):
    compiled = load_target(target).compiled
    async with Supervisor(compiled, target, inline=frozenset({"all"}), fuse=fuse,
                          barrier=barrier) as sup:
        await sup.wait_ready()
        async def collect(handle):
            return [e async for e in handle]

        handles = [sup.router.submit({"text": t}) for t in texts]
        events = await asyncio.wait_for(asyncio.gather(*(collect(h) for h in handles)), 60)
        return events, dict(sup.router.stats.items), sup.fused


def _reference(target: str, text: str) -> list[tuple]:
    try:
        result = af.run(target, text=text)
    except af.StageError as err:
        return [("error", err.stage, dict(err.ancestry))]
    return [("output", "report", result["report"])]


def _outcome(events: list) -> list[tuple]:
    last = events[-1]
    if last.type == "error":
        return [("error", last.stage, dict(last.ancestry))]
    return [(e.type, e.stage, e.value) for e in events if e.type == "output"]


TEXTS = ["a bb ccc", "", "one", "x " * 40, "bad apple", "fine BOOM", "skip this"]


@pytest.mark.parametrize("on_error", ["fail", "drop"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_fused_pair_gives_what_altoflow_run_gives(tmp_path, on_error, is_async):
    target = _app(tmp_path, on_error, is_async)
    events, items, fused = asyncio.run(_serve(target, TEXTS))
    assert fused == {"words": "score"}
    for text, got in zip(TEXTS, events):
        assert _outcome(got) == _reference(target, text), text
    # The words never reached the router; the scores (one a request) did.
    assert items.get("words", 0) == 0 and items["score"] > 0


def test_unfused_the_items_go_through_the_router(tmp_path):
    target = _app(tmp_path)
    events, items, fused = asyncio.run(_serve(target, ["a bb ccc"], fuse=False))
    assert fused == {} and items["words"] == 3
    assert _outcome(events[0]) == _reference(target, "a bb ccc")


def test_a_fused_pair_in_barrier_mode_gives_the_same_results(tmp_path):
    target = _app(tmp_path)
    events, _, _ = asyncio.run(_serve(target, TEXTS, barrier=True))
    for text, got in zip(TEXTS, events):
        assert _outcome(got) == _reference(target, text), text


def test_a_failure_in_the_folded_stage_names_it_and_its_item(tmp_path):
    target = _app(tmp_path)
    events, _, _ = asyncio.run(_serve(target, ["good bad"]))
    error = events[0][-1]
    assert (error.type, error.stage, dict(error.ancestry)) == ("error", "score", {"word": 1})
    assert "cannot score 'bad'" in error.error and error.exc_type == "ValueError"


def test_a_dropped_item_of_the_folded_stage_is_logged_as_its_own(tmp_path, caplog):
    target = _app(tmp_path, "drop")
    with caplog.at_level(logging.WARNING, logger="altoflow.router"):
        events, _, _ = asyncio.run(_serve(target, ["good bad"]))
    assert _outcome(events[0]) == [("output", "report", {"text": "good bad", "score": 4})]
    [record] = [r for r in caplog.records if r.name == "altoflow.router"]
    assert (record.stage, record.ancestry) == ("score", {"word": 1})


def test_only_a_fan_out_feeding_just_its_level_s_aggregate_fuses():
    @af.stage(fanout="tok")
    def toks(q: str):
        yield from q

    @af.stage(aggregate=af.ops.count)
    def n(toks: str) -> int:
        return 1

    @af.stage(aggregate=af.ops.collect)
    def both(toks: str, q2: str) -> str:  # reads a request field too: not fused
        return toks

    @af.stage(fanout="tok", timeout=5)
    def slow(q: str):
        yield from q

    @af.stage(aggregate=af.ops.count)
    def m(slow: str) -> int:
        return 1

    plan = af.Pipeline([toks, n]).compiled.plan
    assert fusable(plan, {"toks", "n"}) == {"toks": "n"}
    assert fusable(plan, {"toks"}) == {}  # the aggregate runs in a process
    assert fusable(af.Pipeline([toks, n, both]).compiled.plan, {"toks", "n", "both"}) == {}
    assert fusable(af.Pipeline([toks, both]).compiled.plan, {"toks", "both"}) == {}
    assert fusable(af.Pipeline([slow, m]).compiled.plan, {"slow", "m"}) == {}


PARTIAL_APP = """
import altoflow as af
from altoflow import ops, stage


@stage(fanout="word")
def words(text: str):
    for w in text.split():
        af.partial(w[0])
        yield w


@stage(aggregate=ops.concat(sep=","), output=True)
{async_}def shout(words: str) -> str:
    af.partial(words.upper())  # the folded stage streams too
    return words.upper()
"""


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_the_folded_stage_s_partials_reach_the_client_as_its_own(tmp_path, is_async):
    path = tmp_path / f"partial_{int(is_async)}.py"
    path.write_text(textwrap.dedent(PARTIAL_APP.format(async_="async " if is_async else "")))
    target = str(path)
    compiled = load_target(target).compiled
    texts = ["a bb ccc", "one", "x " * 40]

    async def main():
        async with Supervisor(compiled, target, inline=frozenset({"all"})) as sup:
            await sup.wait_ready()
            assert sup.fused == {"words": "shout"}
            return await asyncio.wait_for(asyncio.gather(*(
                _collect(sup.router.submit({"text": t})) for t in texts)), 60)

    for text, served in zip(texts, asyncio.run(main())):
        seen: list = []
        asyncio.run(execute(compiled, {"text": text}, on_event=seen.append))
        for events in (served, seen):  # each item's partials, joined
            assert [e for e in events if e.type == "partial"], text
        assert _partials(served) == _partials(seen), text
        assert _outcome(served) == _outcome(seen), text


async def _collect(stream) -> list:
    return [e async for e in stream]


def _partials(events: list) -> dict:
    by_item: dict = {}
    for e in events:
        if e.type == "partial":
            key = (e.stage, tuple(e.ancestry.items()))
            by_item[key] = by_item.get(key, "") + e.delta  # an unread one may have merged
    return by_item
