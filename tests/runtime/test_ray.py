"""Replicas as Ray actors (``Supervisor(ray=RayOptions())``, ``altoflow serve --ray``) on a local
Ray: served results equal ``altoflow.run``, a killed actor is restarted by Ray and loses
nothing, and actors are placed by their stage's cpus, gpus and resources.

Ray's start and every actor's process cost seconds on a small machine, so these are few and
share one Ray; they run with ``python -m pytest -m ray`` (README) and are skipped without Ray.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import textwrap
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from altoflow.compiler import load_target  # noqa: E402
from altoflow.runtime.ray_placement import NAMESPACE, RayOptions, actor_name  # noqa: E402
from altoflow.runtime.supervisor import Supervisor  # noqa: E402

from runtime.test_served import _collect, _expected, _write_random  # noqa: E402

pytestmark = pytest.mark.ray

TESTS = Path(__file__).resolve().parent.parent
SLOW = str(TESTS / "pipelines" / "slow.py")


@pytest.fixture(scope="module")
def local_ray():
    # Two CPUs, and two "GPUs" Ray takes our word for (none is used), plus a custom resource.
    ray.init(num_cpus=2, num_gpus=2, resources={"retriever": 2}, include_dashboard=True,
             namespace=NAMESPACE, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _cheap(compiled, cpus: float = 0.1):
    """The pipeline with every stage taking a fraction of a CPU, so that its actors fit on 2."""
    stages = [s.model_copy(update={"cpus": cpus}) for s in compiled.plan.stages]
    return dataclasses.replace(compiled, plan=compiled.plan.model_copy(update={"stages": stages}))


async def _started(target: str, **kw) -> Supervisor:
    sup = Supervisor(_cheap(load_target(target).compiled), target, listen=("127.0.0.1", 0),
                     ray=RayOptions(), **kw)
    await sup.__aenter__()
    try:
        await sup.wait_ready(120)
    except BaseException:
        await sup.stop()
        raise
    return sup


@settings(max_examples=2, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=__import__("randompipes").pipelines(max_stages=4),
       xs=st.lists(st.integers(0, 50), min_size=1, max_size=3))
def test_random_pipelines_on_ray_match_reference(local_ray, tmp_path_factory, case, xs):
    defs, _ = case
    target = _write_random(tmp_path_factory.mktemp("app"), defs)
    requests = [{"x": x} for x in xs]
    expectations = [_expected(target, **fields) for fields in requests]

    async def serve():
        sup = await _started(target)
        try:
            handles = [sup.router.submit(fields) for fields in requests]
            return await asyncio.wait_for(asyncio.gather(*(_collect(h) for h in handles)), 120)
        finally:
            await sup.stop()

    for (outputs, events), (expected, error) in zip(asyncio.run(serve()), expectations):
        if error is not None:
            assert events[-1].type == "error" and events[-1].stage is not None
        else:
            assert events[-1].type == "done", events[-1]
            assert outputs == expected


def _total(n: int) -> int:
    return sum(i * 10 for i in range(n))


@pytest.mark.parametrize("stage", ["slow", "total"], ids=["load-balanced", "aggregate"])
def test_kill_9_of_an_actor_is_restarted_by_ray_and_loses_nothing(local_ray, stage):
    async def main():
        sup = await _started(SLOW)
        try:
            before = sup._ray.where(stage, 0)
            handles = [sup.router.submit({"n": 30, "delay": 0.1}) for _ in range(6)]
            await asyncio.sleep(0.5)  # work (and, for `total`, open groups) on both replicas
            assert sup.kill(stage, 0) == before["pid"]
            results = await asyncio.wait_for(asyncio.gather(*(_collect(h) for h in handles)), 180)
            for outputs, events in results:
                assert events[-1].type == "done", events[-1]
                assert [e.value for e in events if e.type == "output"] == [_total(30)]
            story = sup.router.core.story()
            what = "redispatch" if stage == "slow" else "replay"
            assert any(e.what == what and e.stage == stage for e in story)
            # Ray started a new process for the actor, and it took its slot again.
            await sup.wait_ready(120)
            after = sup._ray.where(stage, 0)
            assert after["pid"] != before["pid"]
            again = await asyncio.wait_for(_collect(sup.router.submit({"n": 4})), 60)
            assert [e.value for e in again[1] if e.type == "output"] == [_total(4)]
        finally:
            await sup.stop()

    asyncio.run(main())


PLACED = """
    import os
    from altoflow import stage

    @stage(replicas=2, gpus=1, cpus=0.1)
    def lm(x: int) -> str:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "")

    @stage(resources={"retriever": 1}, cpus=0.1)
    def retrieve(x: int) -> int:
        return x + 1

    @stage(cpus=0.1)
    def both(lm: str, retrieve: int) -> str:
        return f"{lm}:{retrieve}"
"""


def test_actors_are_placed_by_cpus_gpus_and_resources(local_ray, tmp_path):
    from ray.util.state import list_actors

    app = tmp_path / "placed.py"
    app.write_text(textwrap.dedent(PLACED))
    target = str(app)

    async def main():
        sup = await _started(target)
        try:
            outputs, events = await asyncio.wait_for(
                _collect(sup.router.submit({"x": 1})), 60)
            assert events[-1].type == "done", events[-1]
            devices = [sup._ray.where("lm", slot)["cuda_visible_devices"] for slot in range(2)]
            actors = {a.name: a for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True)}
            return outputs, devices, actors
        finally:
            await sup.stop()

    outputs, devices, actors = asyncio.run(main())
    # Each replica of `lm` has a GPU of its own, and its calls see only that one.
    assert sorted(devices) == ["0", "1"]
    [value] = outputs["both"].values()
    assert value.split(":")[0] in devices and value.endswith(":2")
    app_name = load_target(target).compiled.plan.name
    lm0 = actors[actor_name(app_name, "lm", 0)]
    assert lm0.required_resources == {"CPU": 0.1, "GPU": 1.0}
    assert actors[actor_name(app_name, "retrieve", 0)].required_resources == {
        "CPU": 0.1, "retriever": 1.0}
    assert lm0.ray_namespace == NAMESPACE


def test_a_stage_the_cluster_cannot_hold_fails_the_start_and_says_so(local_ray, tmp_path):
    from altoflow.runtime.ray_placement import RayPlacementError

    app = tmp_path / "big.py"
    app.write_text(textwrap.dedent("""
        from altoflow import stage

        @stage(gpus=4, cpus=0.1)
        def lm(x: int) -> int:
            return x
    """))

    with pytest.raises(RayPlacementError, match=r"stage 'lm' .*one replica takes CPU=0.1, GPU=4"):
        asyncio.run(_started(str(app)))


def test_an_actor_whose_stage_cannot_start_fails_the_start_with_its_error(local_ray, tmp_path):
    app = tmp_path / "broken.py"
    app.write_text(textwrap.dedent("""
        from altoflow import stage

        @stage(cpus=0.1)
        class model:
            def __init__(self):
                raise OSError("no weights at /models/x")

            def __call__(self, x: int) -> int:
                return x
    """))

    with pytest.raises(RuntimeError) as info:
        asyncio.run(_started(str(app)))
    message = str(info.value)
    assert message.startswith("replica model#0: its Ray actor could not start: ")
    assert "OSError: no weights at /models/x" in message
    assert message.endswith("Fix the stage's imports or __init__ and start again")


def test_actors_connect_over_tls_and_one_that_trusts_another_ca_is_not_let_in(local_ray, tmp_path):
    import shutil

    from altoflow.runtime.tls import server_context
    from runtime.test_tcp import _self_signed

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificates")
    cert, key = _self_signed(tmp_path, "router")
    other, _ = _self_signed(tmp_path, "other")

    async def main(ca: str):
        sup = Supervisor(_cheap(load_target(SLOW).compiled), SLOW, listen=("127.0.0.1", 0),
                         tls=server_context(cert, key), ray=RayOptions(tls_ca=open(ca).read()))
        await sup.__aenter__()
        try:
            await sup.wait_ready(60 if ca == cert else 8)
            return [e async for e in sup.router.submit({"n": 7})], sup.router.tcp_statistics()
        finally:
            await sup.stop()

    events, stats = asyncio.run(main(cert))
    assert [(e.type, e.value) for e in events] == [("output", _total(7)), ("done", None)]
    assert stats.authenticated == 5  # items, slow x2, total x2: every replica over the TLS port
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(main(other))  # each actor fails the certificate check, restarts, fails again


def test_a_replica_with_two_gpus_gets_a_placement_group_of_its_own(local_ray, tmp_path):
    from ray.util.state import list_actors, list_placement_groups

    app = tmp_path / "big.py"
    app.write_text(textwrap.dedent("""
        import os
        from altoflow import stage

        @stage(gpus=2, cpus=0.1)
        def lm(x: int) -> str:
            return os.environ.get("CUDA_VISIBLE_DEVICES", "")
    """))
    target = str(app)
    name = actor_name(load_target(target).compiled.plan.name, "lm", 0)

    async def main():
        sup = await _started(target)
        try:
            events = [e async for e in sup.router.submit({"x": 1})]
            [actor] = list_actors(filters=[("name", "=", name), ("state", "=", "ALIVE")],
                                  detail=True)
            groups = list_placement_groups(filters=[("name", "=", f"{name}.gpus")], detail=True)
            return events, actor, groups
        finally:
            await sup.stop()

    events, actor, [group] = asyncio.run(main())
    assert sorted(events[0].value.split(",")) == ["0", "1"]  # both GPUs, seen by the replica
    assert group.state == "CREATED"
    assert [b["unit_resources"] for b in group.bundles] == [{"CPU": 0.1, "GPU": 2.0}]
    assert actor.placement_group_id == group.placement_group_id


def test_rescaling_on_ray_starts_and_ends_actors_and_results_stay_exact(local_ray):
    from runtime.test_rescale_served import SCALED, _settled
    from runtime.test_served import _compare

    requests = [{"n": 6 + i % 5} for i in range(12)]
    expectations = [_expected(SCALED, **fields) for fields in requests]
    plan = load_target(SCALED).compiled.plan

    def actor(stage: str, slot: int) -> bool:
        try:
            ray.get_actor(actor_name(plan.name, stage, slot), namespace=NAMESPACE)
        except ValueError:
            return False
        return True

    async def main():
        sup = await _started(SCALED)
        try:
            tasks = [asyncio.ensure_future(_collect(sup.router.submit(f))) for f in requests[:6]]
            await sup.rescale("per_item", 2)
            await sup.rescale("work", 2)
            await _settled(sup, 120)
            assert actor("per_item", 1) and actor("work", 1)
            tasks += [asyncio.ensure_future(_collect(sup.router.submit(f))) for f in requests[6:]]
            await asyncio.sleep(0.05)
            await sup.rescale("per_item", 1)
            await sup.rescale("work", 1)
            got = await asyncio.wait_for(asyncio.gather(*tasks), 180)
            await _settled(sup, 120)
            for _ in range(200):  # ray.kill returns before the cluster lets the name go
                if not actor("per_item", 1) and not actor("work", 1):
                    break
                await asyncio.sleep(0.05)
            assert not actor("per_item", 1) and not actor("work", 1)  # ended, not restarted
            assert set(sup._ray.replicas) == {(s.name, 0) for s in plan.stages}
            return got
        finally:
            await sup.stop()

    _compare(SCALED, requests, asyncio.run(main()), expectations)
