"""Replicas as Ray actors (``altoflow serve --ray``): Ray places and restarts, altoflow routes.

The ``altoflow serve`` process is the Ray driver. Every replica (a stage and a slot) that is
neither ``--remote`` nor ``--inline`` is one Ray actor, named ``APP.STAGE.SLOT`` in the
``altoflow`` namespace and created with the stage's ``cpus``, ``gpus`` and ``resources`` (so
Ray puts it on a node that has them, and sets its ``CUDA_VISIBLE_DEVICES``), with
``max_restarts`` so that Ray starts it again when its process or node dies. A replica that
needs more than one GPU is created in a placement group of its own (one bundle, STRICT_PACK):
its GPUs are reserved on one node, and a restart finds them there.

The data plane is altoflow's own: the actor runs the worker loop (``runtime.worker.Worker``) in
a thread and connects back to the router's TCP port with the shared secret (over TLS when the
router serves it), exactly as ``altoflow worker --connect`` does; no item goes through Ray's
object store. To the router a restarted actor is a replica that reconnects to its slot, so the
router's rules hold unchanged: stateless work of the dead one is redispatched, aggregate groups
are replayed (docs/runtime.md, "Aggregate replay").

The actor ends its process when its connection ends for any reason but the router's SHUTDOWN
(the router marked it silent, it could not get in): Ray then restarts it, which is what the
local supervisor does for a replica process. Ray is imported only here, and only when used.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from altoflow.compiler import CompiledPipeline
from altoflow.compiler.plan import StagePlan

logger = logging.getLogger("altoflow.ray")

NAMESPACE = "altoflow"
# An actor that could not get in (it never became ready) waits before its process ends and Ray
# restarts it, so that a replica that cannot reach its router does not restart in a tight loop:
# the n-th such failure in a row, each within STABLE_AFTER seconds of the end of the wait before
# it (the next start), waits
# RETRY_DELAY * 2**(n-1) seconds, at most MAX_RETRY_DELAY. Ray starts a restarted actor in a new
# process, so the count is kept in a file named after the actor's id, on its node (a restart on
# another node starts counting again).
RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 30.0
STABLE_AFTER = 30.0


class RayUnavailable(RuntimeError):
    """``--ray`` without Ray installed; the message says what to install."""


class RayPlacementError(RuntimeError):
    """The Ray cluster cannot hold the pipeline's replicas; the message names them and the fix."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable("--ray needs Ray on this machine and every node: pip install "
                             "'altoflow[ray]'") from exc
    return ray


@dataclass(frozen=True)
class RayOptions:
    """How ``serve --ray`` uses Ray.

    ``address``: None joins the cluster ``RAY_ADDRESS`` names, or starts a Ray of its own on this
    machine; ``"auto"`` the cluster this machine belongs to (``ray start``); ``HOST:PORT`` a head
    node's GCS. Ray already initialised in this process (``ray.init``) is used as it is.
    ``router_host``: where the actors reach the router's TCP port (default: the ``--listen`` host,
    or this node's address when that is 0.0.0.0). ``tls_ca``: the PEM text of the CA that signed
    the router's certificate, when it serves TLS. ``max_restarts``: Ray's restarts per actor
    (-1: without end, as the local supervisor restarts a replica).
    """

    address: str | None = None
    router_host: str | None = None
    tls_ca: str | None = None
    max_restarts: int = -1


def actor_name(app: str, stage: str, slot: int) -> str:
    return f"{app}.{stage}.{slot}"


def replica_resources(stage: StagePlan) -> dict[str, float]:
    """What one replica of ``stage`` takes from the cluster, in Ray's names."""
    wanted = {"CPU": stage.cpus, "GPU": stage.gpus, **stage.resources}
    return {k: v for k, v in wanted.items() if v > 0}


def check_fits(stages: list[StagePlan], nodes: list[dict[str, Any]], where: str) -> None:
    """Raise ``RayPlacementError`` unless every replica fits on some alive node and all of them
    fit in the cluster's totals (``nodes`` as ``ray.nodes()`` gives them)."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", n.get("alive", False))]
    totals: dict[str, float] = {}
    for resources in alive:
        for k, v in resources.items():
            totals[k] = totals.get(k, 0.0) + v
    for s in stages:
        want = replica_resources(s)
        if not any(all(r.get(k, 0) >= v for k, v in want.items()) for r in alive):
            raise RayPlacementError(
                f"stage '{s.name}' ({s.location}): one replica takes {_show(want)}, and no node of "
                f"the Ray cluster ({where}) has that much; its nodes have "
                f"{'; '.join(_show(r, only=want) for r in alive) or 'nothing'}. Add a node that has "
                f"it (ray start --address ... --num-gpus N --resources '{{...}}'), or lower the "
                f"stage's cpus=, gpus= or resources=")
    need: dict[str, float] = {}
    for s in stages:
        for k, v in replica_resources(s).items():
            need[k] = need.get(k, 0.0) + v * s.replicas
    short = {k: v for k, v in need.items() if v > totals.get(k, 0.0) + 1e-9}
    if short:
        takers = ", ".join(f"{s.name} x{s.replicas} ({_show(replica_resources(s))} each)"
                           for s in stages if set(replica_resources(s)) & set(short))
        raise RayPlacementError(
            f"the replicas need {_show(short)} in all ({takers}), and the Ray cluster ({where}) has "
            f"{_show({k: totals.get(k, 0.0) for k in short})}. Lower those stages' --replicas or "
            f"what one replica takes (cpus=0.25 is a quarter of a CPU), or add nodes")


def _show(resources: dict[str, float], only: dict[str, float] | None = None) -> str:
    keys = only if only is not None else resources
    return ", ".join(f"{k}={resources.get(k, 0):g}" for k in keys) or "nothing"


class ReplicaActor:
    """One replica inside a Ray actor (wrapped by ``ray.remote`` in ``_actor_class``).

    ``__init__`` loads the target and creates a class stage's instance, so a stage that cannot
    start fails the actor's creation with its message; then a thread serves the router.
    """

    def __init__(self, target: str, stage: str, slot: int, address: str, secret: bytes,
                 tls_ca: str | None, barrier: bool, heartbeat: float, sys_path: list[str],
                 log_level: str, log_format: str) -> None:
        for path in reversed(sys_path):  # a module target is found as the driver finds it
            if path not in sys.path and os.path.isdir(path):
                sys.path.insert(0, path)
        from altoflow import _logging
        from altoflow.runtime.tls import client_context
        from altoflow.runtime.worker import Worker
        from altoflow.wire import Codec

        _logging.configure(log_level, log_format, replica=f"{stage}#{slot}")  # type: ignore[arg-type]
        self.worker = Worker(target, stage, slot, Codec(transport="tcp"), barrier=barrier)
        tls = client_context(cadata=tls_ca) if tls_ca is not None else None
        self.thread = threading.Thread(target=self._serve, args=(address, secret, tls, heartbeat),
                                       name=f"altoflow {stage}#{slot}", daemon=True)
        self.thread.start()

    def _serve(self, address: str, secret: bytes, tls: Any, heartbeat: float) -> None:
        try:
            try:
                import uvloop  # type: ignore[import-not-found]
            except ImportError:
                import asyncio

                asyncio.run(self.worker.serve(address, secret, tls, heartbeat))
            else:
                uvloop.run(self.worker.serve(address, secret, tls, heartbeat))
        except Exception as exc:  # noqa: BLE001  # it is logged, and the process ends below
            logger.error("%s", exc)
        if self.worker.shut_down:
            return  # the router said SHUTDOWN: the supervisor ends this actor
        if not self.worker.ready:
            import ray

            delay = failed_start_delay(_streak_file(ray.get_runtime_context().get_actor_id()))
            logger.error("could not get in; this actor's process ends in %.1f s, and Ray "
                         "starts it again", delay)
            time.sleep(delay)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # Ray restarts the actor, which connects again

    def where(self) -> dict[str, Any]:
        """Where this replica runs: its pid, node and the devices Ray gave it."""
        import ray

        context = ray.get_runtime_context()
        return {"pid": os.getpid(), "node_id": context.get_node_id(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "assigned": context.get_assigned_resources()}


def _streak_file(actor_id: str) -> str:
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"altoflow-ray-{actor_id}.failed-starts")


def failed_start_delay(path: str, now: float | None = None) -> float:
    """Count one more failed start in ``path`` and return how long to wait (see RETRY_DELAY).

    The file holds the failures in a row, when the last one was and how long it waited; a
    failure more than STABLE_AFTER seconds after that wait ended starts the count again. An
    unreadable file counts as none."""
    now = time.time() if now is None else now
    try:
        with open(path) as f:
            count, last, waited = f.read().split()
        streak = int(count) + 1 if now - float(last) - float(waited) < STABLE_AFTER else 1
    except (OSError, ValueError):
        streak = 1
    delay = min(RETRY_DELAY * 2 ** (streak - 1), MAX_RETRY_DELAY)
    try:
        with open(path, "w") as f:
            f.write(f"{streak} {now} {delay}")
    except OSError:
        pass  # no place to count: every failure waits the first delay
    return delay


def _user_paths() -> list[str]:
    """The driver's working directory and the ``sys.path`` entries that are not Python's own or
    installed packages': where a module target may be found (an actor adds those it has)."""
    own = tuple(os.path.join(p, "") for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    paths = [os.getcwd(), *(p for p in sys.path if p)]
    return [p for p in dict.fromkeys(os.path.abspath(p) for p in paths)
            if not os.path.join(p, "").startswith(own)]


_ACTOR: Any = None


def _actor_class() -> Any:
    global _ACTOR
    if _ACTOR is None:
        _ACTOR = import_ray().remote(ReplicaActor)
    return _ACTOR


@dataclass
class _Replica:
    stage: str
    slot: int
    handle: Any
    started: Any  # the ObjectRef of a first call: it fails if the actor could not be created
    group: Any = None  # its placement group, for a replica with more than one GPU


class RayReplicas:
    """The driver's side: creates, restarts and removes the replicas' actors."""

    def __init__(self, options: RayOptions, compiled: CompiledPipeline, target: str, *,
                 barrier: bool, heartbeat: float) -> None:
        self.options = options
        self.compiled = compiled
        # Actors start in a directory of Ray's: a file target must name its file absolutely.
        path, sep, name = target.partition(":")
        self.target = os.path.abspath(path) + sep + name if path.endswith(".py") else target
        self.barrier = barrier
        self.heartbeat = heartbeat
        self.replicas: dict[tuple[str, int], _Replica] = {}
        self._removed: set[str] = set()  # actor names ended by ``remove``, maybe not free yet
        self.owns = False  # whether this process started Ray (and shuts it down)
        self.ray = import_ray()

    def connect(self) -> str:
        """Join (or start) the Ray cluster; returns how it was found, for messages."""
        ray = self.ray
        if ray.is_initialized():
            return "the Ray this process had initialised"
        address = self.options.address
        ray.init(address=address, namespace=NAMESPACE, include_dashboard=False,
                 log_to_driver=True, configure_logging=False)
        self.owns = True
        return f"--ray {address}" if address else (
            f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS")
            else "a Ray started on this machine")

    def check_fits(self, stages: list[StagePlan], where: str) -> None:
        check_fits(stages, self.ray.nodes(), where)

    def router_host(self, listen_host: str) -> str:
        if self.options.router_host:
            return self.options.router_host
        if listen_host in ("", "0.0.0.0", "::"):
            return self.ray.util.get_node_ip_address()
        return listen_host

    def start(self, stage: StagePlan, slot: int, address: str, secret: bytes) -> None:
        ray = self.ray
        name = actor_name(self.compiled.plan.name, stage.name, slot)
        if name in self._removed:  # a slot given back by a rescale: its old actor's name
            self._removed.discard(name)
            self._wait_free(name, time.monotonic() + 10)
        resources = dict(stage.resources)
        options: dict[str, Any] = dict(
            name=actor_name(self.compiled.plan.name, stage.name, slot), namespace=NAMESPACE,
            num_cpus=stage.cpus, num_gpus=stage.gpus, resources=resources,
            max_restarts=self.options.max_restarts, max_task_retries=0)
        group = None
        if stage.gpus > 1:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            group = ray.util.placement_group(
                [replica_resources(stage)], strategy="STRICT_PACK",
                name=f"{options['name']}.gpus", lifetime=None)
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)
        try:
            handle = _actor_class().options(**options).remote(
                self.target, stage.name, slot, address, secret, self.options.tls_ca, self.barrier,
                self.heartbeat, _user_paths(), os.environ.get("ALTOFLOW_LOG_LEVEL", "info"),
                os.environ.get("ALTOFLOW_LOG_FORMAT", "text"))
        except ValueError as exc:  # the name is taken
            raise RayPlacementError(
                f"cannot create the Ray actor {options['name']!r} ({exc}): another `altoflow serve "
                f"--ray` of {self.compiled.plan.name} runs on this cluster; stop it first") from exc
        self.replicas[(stage.name, slot)] = _Replica(stage.name, slot, handle,
                                                     handle.where.remote(), group)

    def failed(self) -> list[str]:
        """The messages of replicas whose actor could not be created (their stage's import or
        ``__init__`` failed), at once, without waiting."""
        ray = self.ray
        refs = {r.started: r for r in self.replicas.values()}
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        messages = []
        for ref in done:
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.RayActorError as exc:
                r = refs[ref]
                messages.append(f"replica {r.stage}#{r.slot}: its Ray actor could not start: {exc}")
        return messages

    def where(self, stage: str, slot: int, timeout: float = 60) -> dict[str, Any]:
        """The replica's pid, node and devices, waiting out a restart of its actor.

        A restarted actor's thread joins the router while Ray still finishes its ``__init__``,
        so the router can call the replica ready while Ray refuses calls to the actor
        (``ActorUnavailableError``) for a moment more.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.ray.get(self.replicas[(stage, slot)].handle.where.remote(),
                                    timeout=max(deadline - time.monotonic(), 0.1))
            except self.ray.exceptions.ActorUnavailableError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def kill(self, stage: str, slot: int) -> int:
        """Kill -9 the actor's process (it must run on this machine); Ray restarts it."""
        pid = self.where(stage, slot)["pid"]
        os.kill(pid, signal.SIGKILL)
        return pid

    def remove(self, stage: str, slot: int) -> None:
        """End the actor of a slot that a rescale removed (Ray restarts it not)."""
        replica = self.replicas.pop((stage, slot), None)
        if replica is None:
            return
        try:
            self.ray.kill(replica.handle, no_restart=True)
        except Exception as exc:  # noqa: BLE001  # already gone: nothing to end
            logger.debug("ray.kill(%s#%s): %s", stage, slot, exc)
        if replica.group is not None:
            self.ray.util.remove_placement_group(replica.group)
        self._removed.add(actor_name(self.compiled.plan.name, stage, slot))

    def _wait_free(self, name: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                self.ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                return
            time.sleep(0.05)

    def restart(self, stage: str, slot: int) -> None:
        """End the actor (a silent one: stopped or wedged) so that Ray starts it again."""
        replica = self.replicas.get((stage, slot))
        if replica is not None:
            self.ray.kill(replica.handle, no_restart=False)

    def _wait_names_free(self, timeout: float) -> None:
        # ray.kill returns before the cluster has released the actor's name; a server started
        # right after this one (the same app) must find its names free.
        deadline = time.monotonic() + timeout
        names = {actor_name(self.compiled.plan.name, r.stage, r.slot) for r in self.replicas.values()}
        for name in sorted(names | self._removed):
            self._wait_free(name, deadline)

    def stop(self, shutdown: bool = True) -> None:
        """Remove every actor (Ray restarts none of them) and placement group; with
        ``shutdown``, end the Ray this process started."""
        for replica in self.replicas.values():
            try:
                self.ray.kill(replica.handle, no_restart=True)
            except Exception as exc:  # noqa: BLE001  # already gone: nothing to end
                logger.debug("ray.kill(%s#%s): %s", replica.stage, replica.slot, exc)
            if replica.group is not None:
                self.ray.util.remove_placement_group(replica.group)
        if shutdown:
            self._wait_names_free(timeout=10)
        self.replicas.clear()
        if shutdown and self.owns:
            self.ray.shutdown()
            self.owns = False
