"""Rescaling a running served pipeline keeps its results exact (``Supervisor.rescale``).

Requests run while a load-balanced stage and keyed aggregates grow and shrink; each request
must still get what ``altoflow.run`` returns, new slots must get replicas placed as the
stage's others are (processes or inline), and removed slots' replicas must drain, stop and
stay stopped (not counted as crashes). The random test rescales random stages of random
pipelines during traffic.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from altoflow.compiler import load_target
from altoflow.runtime.supervisor import Supervisor
from test_served import _collect, _compare, _expected, _write_random

SCALED = str(Path(__file__).resolve().parent.parent / "pipelines" / "scaled.py")


async def _settled(sup: Supervisor, timeout: float = 30) -> None:
    """Until every stage has a ready replica on each of its slots and no other."""
    async def poll() -> None:
        while True:
            core = sup.router.core
            if all([s.state for s in core.scale(n)] == ["ready"] * core.count[n] for n in core.stages):
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


# (stage, replicas) in order, with requests sent before each. Inline replicas start at once;
# processes take a while, so the process run waits for each rescale to settle and has fewer.
INLINE_STEPS = [("work", 3), ("squares", 3), ("per_item", 2), ("work", 1), ("squares", 2),
                ("per_item", 3), ("squares", 1), ("per_item", 1), ("work", 2), ("squares", 2)]
PROCESS_STEPS = [("work", 2), ("squares", 2), ("work", 1), ("squares", 1), ("per_item", 2)]


@pytest.mark.parametrize("inline", [False, True], ids=["process", "inline"])
def test_rescaling_during_concurrent_requests_keeps_results_exact(inline: bool) -> None:
    steps = INLINE_STEPS if inline else PROCESS_STEPS
    requests = [{"n": 4 + (i * 7) % 17} for i in range(4 * len(steps))]
    expectations = [_expected(SCALED, **fields) for fields in requests]
    compiled = load_target(SCALED).compiled
    placed = frozenset({"all"}) if inline else frozenset()

    async def serve():
        async with Supervisor(compiled, SCALED, inline=placed) as sup:
            await sup.wait_ready()
            tasks = []
            for i, (stage, n) in enumerate(steps):
                tasks += [asyncio.ensure_future(_collect(sup.router.submit(fields)))
                          for fields in requests[4 * i:4 * (i + 1)]]
                await asyncio.sleep(0.02)  # they are under way when the rescale comes
                before = sup.router.core.count[stage]
                slots = await sup.rescale(stage, n)
                assert [s.slot for s in slots if s.state in ("starting", "ready")] == list(range(n))
                if not inline:
                    # A new slot's process takes a while to connect: it is starting, not down.
                    assert sup.router.starting()[stage] == max(0, n - before)
                    await _settled(sup)
                    assert sup.router.starting()[stage] == 0
            got = await asyncio.wait_for(asyncio.gather(*tasks), 120)
            await _settled(sup)
            children = [(c.stage, c.slot, c.restarts) for c in sup.children]
            return (got, children, len(sup._inline_tasks), dict(sup.router.core.count),
                    sup.router.ready())

    got, children, inline_tasks, count, ready = asyncio.run(serve())
    _compare(SCALED, requests, got, expectations)
    last = {"items": 1, "parts": 1, "work": 1, "squares": 1, "per_item": 1}
    last.update(steps)
    assert count == ready == last
    if inline:
        assert inline_tasks == sum(count.values())  # the drained ones have ended
    else:
        # One process per slot now, none restarted: the drained ones stopped for good.
        assert sorted((s, slot) for s, slot, _ in children) == sorted(
            (s, slot) for s, n in count.items() for slot in range(n))
        assert all(restarts == 0 for _, _, restarts in children)


def test_a_rescale_names_the_stage_and_refuses_zero() -> None:
    compiled = load_target(SCALED).compiled

    async def serve():
        async with Supervisor(compiled, SCALED, inline=frozenset({"all"})) as sup:
            await sup.wait_ready()
            with pytest.raises(ValueError, match="no stage named 'nope'; stages: items, work"):
                await sup.rescale("nope", 2)
            with pytest.raises(ValueError, match=r"whole number >= 1 .* not 0"):
                await sup.rescale("work", 0)
            assert sup.router.core.count["work"] == 1

    asyncio.run(serve())


def test_a_removed_slots_process_that_dies_while_draining_is_not_restarted() -> None:
    compiled = load_target(SCALED).compiled
    requests = [{"n": 30} for _ in range(6)]
    expectations = [_expected(SCALED, **fields) for fields in requests]

    async def serve():
        async with Supervisor(compiled, SCALED, replicas={"per_item": 2}) as sup:
            await sup.wait_ready()
            tasks = [asyncio.ensure_future(_collect(sup.router.submit(f))) for f in requests]
            held = False
            for _ in range(400):  # until slot 1 holds a group
                held = any(r.groups for r in sup.router.core.replicas.values()
                           if r.stage == "per_item" and r.slot == 1)
                if held:
                    break
                await asyncio.sleep(0.005)
            assert held, "slot 1 of per_item held no group"
            await sup.rescale("per_item", 1)
            sup.kill("per_item", 1)  # its groups replay on slot 0
            got = await asyncio.wait_for(asyncio.gather(*tasks), 120)
            await _settled(sup)
            return got, [(c.stage, c.slot) for c in sup.children]

    got, children = asyncio.run(serve())
    _compare(SCALED, requests, got, expectations)
    assert sorted(children) == [("items", 0), ("parts", 0), ("per_item", 0), ("squares", 0),
                                ("work", 0)]


# Random pipelines, random rescales during their requests. Each example starts processes, so
# the default run is small, as test_served.py's; ALTOFLOW_SERVED_EXAMPLES=50 searches longer.
@settings(max_examples=int(os.environ.get("ALTOFLOW_SERVED_EXAMPLES", "3")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=__import__("randompipes").pipelines(max_stages=5),
       xs=st.lists(st.integers(0, 50), min_size=2, max_size=6),
       placement=st.lists(st.booleans(), min_size=5, max_size=5),
       rescales=st.lists(st.tuples(st.integers(0, 4), st.integers(1, 3),
                                   st.sampled_from([0.0, 0.01, 0.03])), min_size=1, max_size=4))
def test_random_pipelines_rescaled_while_serving_match_reference(tmp_path_factory, case, xs,
                                                                 placement, rescales):
    from dataclasses import replace

    defs, _ = case
    defs = [replace(d, delay=max(d.delay, 0.005)) for d in defs]  # rescales find work in flight
    target = _write_random(tmp_path_factory.mktemp("app"), defs)
    compiled = load_target(target).compiled
    names = compiled.plan.names
    inline = frozenset(n for n, here in zip(names, placement) if here)
    requests = [{"x": x} for x in xs]
    expectations = [_expected(target, **fields) for fields in requests]

    async def serve():
        async with Supervisor(compiled, target, inline=inline) as sup:
            await sup.wait_ready()
            tasks = []
            for i, fields in enumerate(requests):
                tasks.append(asyncio.ensure_future(_collect(sup.router.submit(fields))))
                if i < len(rescales):
                    index, n, after = rescales[i]
                    await asyncio.sleep(after)
                    await sup.rescale(names[index % len(names)], n)
            got = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            await _settled(sup)
            return got

    _compare(target, requests, asyncio.run(serve()), expectations)


def test_a_remote_stages_new_slot_takes_a_worker_and_a_removed_ones_worker_exits_0() -> None:
    import subprocess
    import sys

    def worker(port: int, slot: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "altoflow", "worker", "--target", SCALED, "--stage",
             "per_item", "--slot", str(slot), "--connect", f"127.0.0.1:{port}"],
            env={**os.environ, "ALTOFLOW_SECRET": "s3cret"}, stderr=subprocess.PIPE, text=True)

    compiled = load_target(SCALED).compiled
    requests = [{"n": 12} for _ in range(4)]
    expectations = [_expected(SCALED, **fields) for fields in requests]

    async def main():
        sup = Supervisor(compiled, SCALED, listen=("127.0.0.1", 0), secret=b"s3cret",
                         remote=frozenset({"per_item"}), inline=frozenset({"all"}))
        await sup.__aenter__()
        first = worker(sup.tcp_port, 0)
        try:
            await sup.wait_ready(60)
            await sup.rescale("per_item", 2)
            second, extra = worker(sup.tcp_port, 1), worker(sup.tcp_port, 2)
            await _settled(sup, 60)
            refused = await asyncio.to_thread(extra.wait, 60)
            tasks = [asyncio.ensure_future(_collect(sup.router.submit(f))) for f in requests]
            await asyncio.sleep(0.02)
            await sup.rescale("per_item", 1)
            got = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            drained = await asyncio.to_thread(second.wait, 60)  # told SHUTDOWN once drained
            return got, refused, extra.stderr.read(), drained
        finally:
            await sup.stop()
            first.wait(timeout=30)  # it exits when the router goes away

    got, refused, refused_err, drained = asyncio.run(main())
    _compare(SCALED, requests, got, expectations)
    # A worker for a slot past the count is not let in (the router logs why: the slot count).
    assert refused == 1 and "hung up before letting it in" in refused_err, refused_err
    assert drained == 0
