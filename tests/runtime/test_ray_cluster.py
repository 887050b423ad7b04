"""``serve --ray`` on a simulated multi-node cluster (``ray.cluster_utils.Cluster``, nodes as
processes on this machine): a replica goes to the node that has its stage's resource, and when
that node is removed Ray restarts it on another such node, where it takes its slot again and the
requests waiting for it end with their exact results."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

import altoflow as af  # noqa: E402
from altoflow.compiler import load_target  # noqa: E402
from altoflow.runtime.ray_placement import NAMESPACE, RayOptions  # noqa: E402
from altoflow.runtime.supervisor import Supervisor  # noqa: E402

pytestmark = pytest.mark.ray

APP = """
    from altoflow import ops, stage

    @stage(fanout="part", cpus=0.1)
    def parts(n: int):
        yield from range(n)

    @stage(resources={"index": 1}, cpus=0.1)
    def lookup(parts: int) -> int:
        return parts * parts

    @stage(aggregate=ops.sum, cpus=0.1)
    def total(lookup: int) -> int:
        return lookup
"""


async def _events(handle) -> list:
    return [e async for e in handle]


def test_a_replica_runs_where_its_resource_is_and_moves_when_that_node_goes(tmp_path):
    app = tmp_path / "indexed.py"
    app.write_text(textwrap.dedent(APP))
    target = str(app)
    compiled = load_target(target).compiled
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    first = cluster.add_node(num_cpus=1, resources={"index": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)

    async def main():
        sup = Supervisor(compiled, target, listen=("127.0.0.1", 0), ray=RayOptions())
        await sup.__aenter__()
        try:
            await sup.wait_ready(120)
            before = sup._ray.where("lookup", 0)["node_id"]
            once = await asyncio.wait_for(_events(sup.router.submit({"n": 5})), 60)
            second = cluster.add_node(num_cpus=1, resources={"index": 1})
            cluster.wait_for_nodes()
            cluster.remove_node(first)
            # Submitted while `lookup` has no replica: its items wait for the restarted one.
            handles = [sup.router.submit({"n": n}) for n in (3, 7)]
            later = await asyncio.wait_for(asyncio.gather(*(_events(h) for h in handles)), 180)
            await sup.wait_ready(120)
            after = sup._ray.where("lookup", 0)["node_id"]
            return before, after, second.node_id, once, later
        finally:
            await sup.stop()

    try:
        before, after, second_id, once, later = asyncio.run(main())
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert before == first.node_id and after == second_id
    for events, n in zip([once, *later], (5, 3, 7)):
        assert events[-1].type == "done", events[-1]
        assert [e.value for e in events if e.type == "output"] == [af.run(target, n=n)["total"]]
