"""``serve --ray``'s checks that need no Ray: what a replica asks of the cluster, and the refusal
of a pipeline the cluster's nodes cannot hold (from ``ray.nodes()``'s records, written here)."""

from __future__ import annotations

import pytest

import altoflow as af
from altoflow import stage
from altoflow.runtime.ray_placement import RayPlacementError, actor_name, check_fits, replica_resources


def _stages():
    @stage(replicas=2, gpus=1, cpus=2)
    def lm(x: int) -> int:
        return x

    @stage(cpus=0.5, resources={"retriever": 1})
    def retrieve(lm: int) -> int:
        return lm

    @stage(cpus=0)
    def fmt(retrieve: int) -> int:
        return retrieve

    return af.Pipeline([lm, retrieve, fmt]).compiled.plan.stages


def _node(alive=True, **resources):
    return {"Alive": alive, "Resources": resources}


def test_a_replica_asks_for_its_cpus_gpus_and_resources_and_is_named_by_app_stage_slot():
    lm, retrieve, fmt = _stages()
    assert replica_resources(lm) == {"CPU": 2.0, "GPU": 1.0}
    assert replica_resources(retrieve) == {"CPU": 0.5, "retriever": 1.0}
    assert replica_resources(fmt) == {}
    assert actor_name("claimverify", "lm", 1) == "claimverify.lm.1"


def test_a_pipeline_that_fits_passes():
    nodes = [_node(CPU=4, GPU=1), _node(CPU=4, GPU=1, retriever=1), _node(alive=False, GPU=8)]
    check_fits(_stages(), nodes, "test")


def test_a_replica_no_node_can_hold_is_refused_naming_the_stage_and_the_nodes():
    nodes = [_node(CPU=4, GPU=2), _node(CPU=1, retriever=1)]  # retrieve wants CPU=0.5 with it: ok
    big = [s.model_copy(update={"gpus": 4.0}) if s.name == "lm" else s for s in _stages()]
    with pytest.raises(RayPlacementError) as info:
        check_fits(big, nodes, "--ray-address head:6379")
    message = str(info.value)
    assert message.startswith("stage 'lm' (")
    assert ("one replica takes CPU=2, GPU=4, and no node of the Ray cluster (--ray-address "
            "head:6379) has that much; its nodes have CPU=4, GPU=2; CPU=1, GPU=0") in message


def test_replicas_past_the_clusters_totals_are_refused_with_the_totals():
    nodes = [_node(CPU=8, GPU=1), _node(CPU=1, retriever=1), _node(alive=False, GPU=4)]
    with pytest.raises(RayPlacementError) as info:
        check_fits(_stages(), nodes, "test")
    assert str(info.value).startswith(
        "the replicas need GPU=2 in all (lm x2 (CPU=2, GPU=1 each)), and the Ray cluster (test) "
        "has GPU=1. Lower those stages' --replicas or what one replica takes")


def test_the_kuberay_manifest_serves_the_app_with_ray_as_the_head_pods_foreground_process():
    yaml = pytest.importorskip("yaml")
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "ray" / "raycluster.yaml"
    cluster, service = yaml.safe_load_all(path.read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert cluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    [head] = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    [script] = head["args"]
    assert "$KUBERAY_GEN_RAY_START_CMD &" in script
    assert "exec altoflow serve examples/claimverify/app.py --ray --ray-address auto" in script
    assert "--secret-file /etc/altoflow/secret" in script
    for group in cluster["spec"]["workerGroupSpecs"]:
        [worker] = group["template"]["spec"]["containers"]
        assert worker["image"] == head["image"]  # one image: the app at the same path everywhere
    assert service["kind"] == "Service" and service["spec"]["ports"][0]["targetPort"] == 8000


def test_the_core_and_the_command_do_not_import_ray():
    import subprocess
    import sys

    code = ("import sys, altoflow, altoflow.cli, altoflow.runtime.supervisor, "
            "altoflow.runtime.ray_placement, altoflow.server.served; "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_an_actor_that_cannot_get_in_backs_off_exponentially_until_a_quiet_spell(tmp_path):
    from altoflow.runtime.ray_placement import (MAX_RETRY_DELAY, RETRY_DELAY, STABLE_AFTER,
                                                failed_start_delay)

    path = str(tmp_path / "actor.failed-starts")
    t = 1000.0
    delays = []
    for _ in range(8):  # each restart fails again a moment after the last delay
        delays.append(failed_start_delay(path, now=t))
        t += delays[-1] + 2.0
    assert delays == [min(RETRY_DELAY * 2 ** n, MAX_RETRY_DELAY) for n in range(8)]
    assert delays[-1] == MAX_RETRY_DELAY
    # A failure long after the last one starts the count again.
    assert failed_start_delay(path, now=t + MAX_RETRY_DELAY + STABLE_AFTER + 1) == RETRY_DELAY
    # A file that is not ours, or a place with no room to write, counts as none.
    (tmp_path / "actor.failed-starts").write_text("garbage")
    assert failed_start_delay(path, now=t) == RETRY_DELAY
    assert failed_start_delay(str(tmp_path / "missing-dir" / "f"), now=t) == RETRY_DELAY


def test_where_waits_out_an_actor_that_ray_still_restarts():
    # A restarted actor joins the router before Ray has finished its __init__: for that moment
    # Ray refuses calls to it, and `where` (which `kill` and the tests use) waits it out.
    from types import SimpleNamespace

    from altoflow.runtime.ray_placement import RayReplicas

    class ActorUnavailableError(Exception):
        pass

    refusals = []

    def get(ref, timeout):
        if len(refusals) < 2:
            refusals.append(timeout)
            raise ActorUnavailableError("The actor is restarting")
        return ref

    fake_ray = SimpleNamespace(get=get, exceptions=SimpleNamespace(
        ActorUnavailableError=ActorUnavailableError))
    handle = SimpleNamespace(where=SimpleNamespace(remote=lambda: {"pid": 7}))
    replicas = RayReplicas.__new__(RayReplicas)
    replicas.ray = fake_ray
    replicas.replicas = {("lm", 0): SimpleNamespace(handle=handle)}
    assert replicas.where("lm", 0, timeout=5) == {"pid": 7}
    assert len(refusals) == 2
    # One that stays unavailable past the timeout raises Ray's error.
    def down(ref, timeout):
        raise ActorUnavailableError("down")

    fake_ray.get = down
    with pytest.raises(ActorUnavailableError):
        replicas.where("lm", 0, timeout=0.3)
