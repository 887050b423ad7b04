"""The served runtime's processes: a router and one process per replica, supervised.

The supervisor makes a private socket directory (mode 0700: over a UNIX socket, the
directory's permissions are the authentication), starts the router in this process and every
replica as a child process (or, for an ``inline`` stage, as a ``Worker`` in this process, joined
to the router in memory: ``runtime.pipe``), and restarts a replica process that dies. ``stop``
tells replicas to shut down and waits for them (killing those that do not exit), so that no
process is left behind; ``kill_now`` kills them at once.

If the supervisor's own process is killed (kill -9), nothing of it runs to clean up: each
replica exits when its socket to the router closes, and the socket directory, named
``altoflow-*`` under the temp dir and holding an ``owner`` file with the supervisor's pid, is
removed by the next supervisor to start (``remove_stale_socket_dirs``).
``altoflow.server.served.ServedIngress`` puts the HTTP API in front of it (``altoflow serve``).

A replica process of a stage with ``gpus=`` is started with ``CUDA_VISIBLE_DEVICES`` set to
devices of its own (``runtime.gpus``). With ``ray=`` the replicas are Ray actors instead, which
connect back over TCP (``runtime.ray_placement``); Ray restarts them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import shutil
import signal
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from altoflow import _tracing
from altoflow.compiler import CompiledPipeline
from altoflow.wire import FANOUT_WINDOW, HANDSHAKE_TIMEOUT, Codec
from altoflow.runtime.fusion import fusable
from altoflow.runtime.router import MAX_BUFFERED, Router
from altoflow.runtime.timeline import TimelineRecorder

if TYPE_CHECKING:
    from altoflow.runtime.gpus import Gpus
    from altoflow.runtime.ray_placement import RayOptions, RayReplicas

logger = logging.getLogger("altoflow.supervisor")

# Restarts back off exponentially while a replica keeps dying soon after it started: the n-th
# death in a row of one that lived under STABLE_AFTER seconds waits RESTART_DELAY * 2**(n-1)
# seconds, at most MAX_RESTART_DELAY, before the next start. From CRASH_LOOP deaths in a row the
# replica is in a crash loop (``crash_looping``, ``/healthz``) until one lives STABLE_AFTER seconds.
RESTART_DELAY = 0.1
MAX_RESTART_DELAY = 10.0
STABLE_AFTER = 30.0
CRASH_LOOP = 3

# `--inline all`: every stage but the remote ones runs in the router's process.
ALL_INLINE = "all"

SOCKET_DIR_PREFIX = "altoflow-"
OWNER_FILE = "owner"  # in a socket directory: the pid of the process that made it


def make_socket_dir() -> str:
    """A new private socket directory under the temp dir that names its owner (this process)."""
    path = tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX)
    os.chmod(path, 0o700)
    with open(os.path.join(path, OWNER_FILE), "w") as f:
        f.write(f"{os.getpid()}\n")
    return path


def remove_stale_socket_dirs(parent: str | None = None) -> list[str]:
    """Remove the socket directories whose owner is dead; returns their paths.

    Only directories of ``make_socket_dir`` are candidates: named ``altoflow-*`` under
    ``parent`` (the temp dir), this user's, holding an ``owner`` file whose pid is no live
    process. One with no readable owner (made by an older altoflow, or being made right now)
    is left alone.
    """
    parent = parent or tempfile.gettempdir()
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(SOCKET_DIR_PREFIX):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat().st_uid != os.getuid():
                continue
            with open(os.path.join(entry.path, OWNER_FILE)) as f:
                owner = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if owner != os.getpid() and not _alive(owner):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a process: keep the directory rather than guess
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@dataclass
class _Child:
    stage: str
    slot: int
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    connected: bool = False  # it has said HELLO once: a later crash is a restart, not a bad start
    started: float = 0.0  # time.monotonic() of the latest start
    streak: int = 0  # deaths in a row, each soon after its start
    retired: bool = False  # a rescale removed its slot and it is done: it is not restarted

    def crash_looping(self, now: float) -> bool:
        alive = self.process is not None and self.process.returncode is None
        return self.streak >= CRASH_LOOP and not (alive and now - self.started >= STABLE_AFTER)


def with_replicas(compiled: CompiledPipeline, replicas: dict[str, int]) -> CompiledPipeline:
    """The pipeline with replica counts overridden (``--replicas NAME=N``)."""
    unknown = sorted(set(replicas) - set(compiled.plan.names))
    if unknown:
        raise ValueError(f"--replicas names no stage: {', '.join(unknown)}; stages: "
                         f"{', '.join(compiled.plan.names)}")
    bad = {k: v for k, v in replicas.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise ValueError(f"--replicas needs counts >= 1, got {bad}")
    stages = [s.model_copy(update={"replicas": replicas.get(s.name, s.replicas)})
              for s in compiled.plan.stages]
    return dataclasses.replace(compiled, plan=compiled.plan.model_copy(update={"stages": stages}))


def _local_devices(compiled: CompiledPipeline, remote: frozenset[str], inline: frozenset[str],
                   gpus: Gpus | None) -> dict[tuple[str, int], tuple[str, ...]]:
    """The devices of each local replica process that needs GPUs; ``ValueError`` (a
    ``GpuShortage``) when they are not there, before anything starts."""
    needing = [s for s in compiled.plan.stages if s.gpus > 0 and s.name not in remote]
    inlined = sorted(s.name for s in needing if s.name in inline)
    if inlined:
        raise ValueError(f"{', '.join(inlined)}: a stage with gpus= runs its replicas as processes, "
                         f"each on devices of its own, so it cannot be --inline")
    if not needing:
        return {}
    from altoflow.runtime.gpus import assign_gpus, detect_gpus

    return assign_gpus(needing, gpus if gpus is not None else detect_gpus())


class Supervisor:
    """Runs a router and its replicas; ``async with Supervisor(...) as sup: sup.router...``."""

    def __init__(self, compiled: CompiledPipeline, target: str, *, replicas: dict[str, int] | None = None,
                 max_inflight: int = 1024, allow_pickle: bool = False, restart: bool = True,
                 barrier: bool = False, listen: tuple[str, int] | None = None,
                 secret: bytes = b"", remote: frozenset[str] = frozenset(),
                 tls: ssl.SSLContext | None = None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT, max_pending: int = 64,
                 max_connections: int = 1024, replay_limit: int = 100_000,
                 heartbeat: float = 1.0, inline: frozenset[str] = frozenset(),
                 max_buffered: int = MAX_BUFFERED, fuse: bool = True,
                 timeline: TimelineRecorder | None = None, pin_requests: bool = False,
                 ray: RayOptions | None = None, gpus: Gpus | None = None) -> None:
        # With `ray` (altoflow.runtime.ray_placement) every replica that is not remote or inline
        # is a Ray actor that connects back over TCP: a TCP port and a secret are implied.
        self.ray_options = ray
        self._ray: RayReplicas | None = None
        if ray is not None:
            if allow_pickle:
                raise ValueError("--allow-pickle is for local sockets only; Ray replicas connect "
                                 "over TCP, so it cannot be used with --ray")
            if tls is not None and ray.tls_ca is None:
                raise ValueError("--ray with --tls-cert needs the CA the actors trust: --tls-ca PATH")
            listen = listen or ("0.0.0.0", 0)
            secret = secret or secrets.token_bytes(32)
        self.barrier = barrier
        # Inline stages run their replicas in this process: their items never touch a socket.
        # "all" names every stage that is not remote: the whole pipeline in one process.
        self.inline = inline
        self.fuse = fuse
        self.fused: dict[str, str] = {}
        # TCP for replicas on other machines: `remote` stages get no local process; their
        # replicas connect with `altoflow worker --connect HOST:PORT` and the shared secret,
        # over TLS when `tls` (altoflow.runtime.tls.server_context) is given.
        self.listen = listen
        self.secret = secret
        self.remote = remote
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self.max_pending = max_pending
        self.max_connections = max_connections
        if tls is not None and listen is None:
            raise ValueError("--tls-cert and --tls-key are for the --listen port: add --listen HOST:PORT")
        if listen is not None and allow_pickle:
            raise ValueError("--allow-pickle is for local sockets only; it cannot be used with --listen")
        self.compiled = with_replicas(compiled, replicas or {})
        compiled = self.compiled
        # Without Ray, each replica process of a stage with gpus= gets devices of its own
        # (CUDA_VISIBLE_DEVICES), from `gpus` or the machine's (runtime.gpus); with Ray, Ray does.
        self.devices: dict[tuple[str, int], tuple[str, ...]] = {}
        if ray is None:
            self.devices = _local_devices(compiled, remote, inline, gpus)
        self.target = target
        self.restart = restart
        self.allow_pickle = allow_pickle
        # Only the replicas and the requests' consumers may unpickle, never the router itself.
        self.heartbeat = heartbeat
        self.router = Router(compiled, output_codec=Codec(allow_pickle=allow_pickle),
                             max_inflight=max_inflight, replay_limit=replay_limit,
                             heartbeat=heartbeat, on_silent=self._silent,
                             max_buffered=max_buffered,
                             # A barrier replica holds its outputs back: nothing to pace.
                             fanout_window=None if barrier else FANOUT_WINDOW,
                             timeline=timeline, pin_requests=pin_requests,
                             on_drained=self._drained)
        self.children: list[_Child] = []
        # The replicas started and not retired, per (stage, slot): a _Child (a process), an
        # inline Worker's task, or True (a Ray actor, in self._ray.replicas).
        self._placed: dict[tuple[str, int], Any] = {}
        self._address = ""  # where Ray actors connect back to
        self._rescaling = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._inline_tasks: set[asyncio.Task] = set()  # inline replicas' Worker.serve
        self._stopping = False

    async def __aenter__(self) -> "Supervisor":
        for path in remove_stale_socket_dirs():
            logger.info("removed %s: its server had died without removing it", path)
        self.dir = make_socket_dir()
        self.path = os.path.join(self.dir, "router.sock")
        await self.router.start(self.path)
        if self.listen is not None:
            self.tcp_port = await self.router.listen_tcp(
                *self.listen, self.secret, tls=self.tls, handshake_timeout=self.handshake_timeout,
                max_pending=self.max_pending, max_connections=self.max_connections)
        unknown = sorted(self.remote - set(self.compiled.plan.names))
        if unknown:
            raise ValueError(f"--remote names no stage: {', '.join(unknown)}")
        if ALL_INLINE in self.inline:
            # Every stage but the remote ones and those that need GPUs (processes, for devices).
            processes = {s.name for s in self.compiled.plan.stages if s.gpus > 0}
            self.inline = (self.inline - {ALL_INLINE}) | (
                set(self.compiled.plan.names) - self.remote - processes)
        unknown = sorted(self.inline - set(self.compiled.plan.names))
        if unknown:
            raise ValueError(f"--inline names no stage: {', '.join(unknown)}; stages: "
                             f"{', '.join(self.compiled.plan.names)} (or {ALL_INLINE} for every one)")
        both = sorted(self.inline & self.remote)
        if both:
            raise ValueError(f"{', '.join(both)}: a stage runs --inline (in the router's process) "
                             f"or --remote (on other machines), not both")
        # Inline fan-outs that fold into their aggregate themselves (runtime.fusion).
        self.fused = fusable(self.compiled.plan, self.inline) if self.fuse else {}
        self.router.fuse(self.fused)
        self.router.by_reference(self.inline)
        if self.ray_options is not None:
            await self._start_ray()
        for stage in self.compiled.plan.stages:
            if stage.name in self.remote:
                continue
            if stage.name in self.inline:
                for slot in range(stage.replicas):
                    self._start_inline(stage.name, slot)
                continue
            if self._ray is not None:
                continue  # Ray actors, started above
            for slot in range(stage.replicas):
                await self._start_process(stage.name, slot)
        return self

    async def _start_process(self, stage: str, slot: int) -> None:
        child = _Child(stage, slot)
        self.children.append(child)
        self._placed[(stage, slot)] = child
        await self._spawn(child)

    # -- rescaling ------------------------------------------------------------------------

    async def rescale(self, stage: str, replicas: int) -> list[Any]:
        """Run ``stage`` on ``replicas`` replicas (``PUT /v1/stages/{stage}/replicas``): the
        router routes by the new count at once (``Router.rescale``); each new slot gets a
        replica placed as the stage's others are (a process, an inline replica, a Ray actor;
        a remote stage's come with ``altoflow worker --slot N``), and each removed slot's
        replica drains, then stops, and is not restarted. Returns the stage's slots
        (``core.SlotState``); ``ValueError`` for an unknown stage or a bad count."""
        async with self._rescaling:  # one at a time: each places and stops by its own count
            return await self._rescale(stage, replicas)

    async def _rescale(self, stage: str, replicas: int) -> list[Any]:
        if self._stopping:
            raise RuntimeError("the server is stopping: it scales nothing")
        if stage in self.router.core.stages and stage not in self.remote:
            sp = self.compiled.plan.stage(stage)
            if sp.gpus > 0 and self._ray is None and isinstance(replicas, int):
                missing = [s for s in range(replicas) if (stage, s) not in self.devices]
                if missing:
                    raise ValueError(
                        f"stage {stage} has gpus={sp.gpus:g}: each local replica gets devices of "
                        f"its own when the server starts, for {sp.replicas} replicas; start it "
                        f"with --replicas {stage}=N for up to N, or serve with --ray")
        self.router.rescale(stage, replicas)  # validates stage and count
        if stage not in self.remote:
            for slot in range(replicas):
                if (stage, slot) not in self._placed:
                    await self._place(stage, slot)
            # A removed slot's replica that has not connected yet holds nothing: stop it now
            # (one that has drains first, and the router's on_drained stops it).
            connected = self.router.core.slots[stage]
            for key in [k for k in self._placed if k[0] == stage and k[1] >= replicas]:
                if key[1] not in connected:
                    self._drained(*key, stop=True)
        return self.router.scale(stage)

    async def _place(self, stage: str, slot: int) -> None:
        if stage in self.inline:
            self._start_inline(stage, slot)
        elif self._ray is not None:
            ray = self._ray
            await asyncio.to_thread(ray.start, self.compiled.plan.stage(stage), slot,
                                    self._address, self.secret)
            self._placed[(stage, slot)] = True
        else:
            await self._start_process(stage, slot)
        logger.info("replica %s#%s started (rescale)", stage, slot)

    def _drained(self, stage: str, slot: int, stop: bool = False) -> None:
        """The replica on removed slot ``slot`` of ``stage`` is done (drained, or down while
        draining; the router tells it SHUTDOWN), or, with ``stop``, had not connected: it is
        stopped here. It is not started again; a slot given back later gets a new one."""
        placed = self._placed.pop((stage, slot), None)
        if isinstance(placed, _Child):
            placed.retired = True
            if stop and placed.process is not None and placed.process.returncode is None:
                placed.process.terminate()
        elif placed is True and self._ray is not None:
            self._ray.remove(stage, slot)  # no restart; its actor holds nothing

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _start_ray(self) -> None:
        # Imported here: the core never imports Ray unless --ray asks for it.
        from altoflow.runtime.ray_placement import RayReplicas

        assert self.ray_options is not None and self.listen is not None
        self._ray = RayReplicas(self.ray_options, self.compiled, self.target,
                                barrier=self.barrier, heartbeat=self.heartbeat)
        try:
            where = self._ray.connect()  # blocks while Ray starts or connects: before any request
            placed = [s for s in self.compiled.plan.stages
                      if s.name not in self.remote and s.name not in self.inline]
            self._ray.check_fits(placed, where)
            address = self._address = f"{self._ray.router_host(self.listen[0])}:{self.tcp_port}"
            for stage in placed:
                for slot in range(stage.replicas):
                    self._ray.start(stage, slot, address, self.secret)
                    self._placed[(stage.name, slot)] = True
        except BaseException:
            await self.stop()  # the router too, and the actors made so far
            raise
        logger.info("replicas of %s are Ray actors (%s), connecting back to %s",
                    ", ".join(s.name for s in placed) or "no stage", where, address)

    async def wait_ready(self, timeout: float = 60) -> None:
        """Until every replica of every stage has connected."""
        want = {s.name: s.replicas for s in self.compiled.plan.stages}

        async def poll() -> None:
            while True:
                live = self.router.live_slots()
                for child in self.children:
                    child.connected = child.connected or (child.stage, child.slot) in live
                if self.router.ready() == want:
                    return
                failed = self._ray.failed() if self._ray is not None else []
                if failed:
                    raise RuntimeError(f"{'; '.join(failed)}. Fix the stage's imports or __init__ "
                                       f"and start again")
                for child in self.children:
                    code = child.process.returncode if child.process is not None else None
                    if not child.connected and (child.restarts or code not in (None, 0)):
                        # A replica that dies before the pipeline is up will not get better by
                        # restarting: the target does not import, or a class stage's __init__ fails.
                        raise RuntimeError(
                            f"replica {child.stage}#{child.slot} exited before it connected; its "
                            f"traceback is above. Fix the stage's imports or __init__ and start again")
                await asyncio.sleep(0.02)

        await asyncio.wait_for(poll(), timeout)

    def _start_inline(self, stage: str, slot: int) -> None:
        # Imported here: only a deployment with inline stages loads a replica into the router.
        from altoflow.runtime.worker import Worker

        try:
            # Its outputs stay Python objects when every stage that takes them is inline too.
            plan = self.compiled.plan
            local_out = all(c in self.inline for c in plan.stage(stage).consumers)
            fused = self.fused.get(stage)
            fused_out = fused is not None and all(c in self.inline for c in plan.stage(fused).consumers)
            worker = Worker(self.target, stage, slot, Codec(allow_pickle=self.allow_pickle),
                            barrier=self.barrier, local_out=local_out, fuse=fused,
                            fused_local_out=fused_out, on_fused_drop=self.router.fused_dropped,
                            watched=self.router.partials_wanted)
        except Exception as exc:
            raise RuntimeError(
                f"inline replica {stage}#{slot} could not start: {type(exc).__name__}: {exc}. Fix "
                f"the stage's imports or __init__ and start again") from exc
        task = asyncio.get_running_loop().create_task(
            worker.serve(f"inline:{stage}#{slot}", connect=self.router.connect_inline))
        self._inline_tasks.add(task)
        self._placed[(stage, slot)] = task
        task.add_done_callback(self._inline_done)

    def _inline_done(self, task: asyncio.Task) -> None:
        self._inline_tasks.discard(task)
        for key in [k for k, v in self._placed.items() if v is task]:
            del self._placed[key]
        if not task.cancelled() and task.exception() is not None and not self._stopping:
            logger.error("an inline replica stopped: %s", task.exception())

    async def _spawn(self, child: _Child) -> None:
        args = [sys.executable, "-m", "altoflow", "worker", "--target", self.target,
                "--stage", child.stage, "--slot", str(child.slot), "--connect", self.path]
        if self.allow_pickle:
            args.append("--allow-pickle")
        if self.barrier:
            args.append("--barrier")
        args += ["--heartbeat", str(self.heartbeat)]
        if _tracing.TRACER is not None:  # the router traces: so do its replicas
            args.append("--otel")
        env = dict(os.environ)
        # glibc serves every block above its mmap threshold with a fresh mmap and unmaps it on
        # free, so a replica passing large payloads would map and fault in new pages per item;
        # raising the thresholds keeps those blocks in its heap for reuse.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "1073741824")
        env.setdefault("MALLOC_TRIM_THRESHOLD_", "1073741824")
        devices = self.devices.get((child.stage, child.slot))
        if devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        # Its own session: a Ctrl-C at the terminal reaches the supervisor, which shuts replicas
        # down in order; a replica whose router vanishes exits when its socket closes.
        child.process = await asyncio.create_subprocess_exec(*args, env=env, start_new_session=True)
        child.started = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._watch(child, child.process))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, child: _Child, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if self._stopping:
            return
        if self._retire(child):
            logger.info("replica %s#%s exited with %s after its slot was removed (rescale)",
                        child.stage, child.slot, code)
            return
        if not self.restart:
            return
        child.restarts += 1
        lived = time.monotonic() - child.started
        child.streak = child.streak + 1 if lived < STABLE_AFTER else 1
        delay = min(RESTART_DELAY * 2 ** min(child.streak - 1, 16), MAX_RESTART_DELAY)
        if child.streak >= CRASH_LOOP:
            logger.error("replica %s#%s exited with %s, %d times in a row within %.0f s of its start: "
                         "a crash loop; restarting in %.1f s (restart %d)", child.stage, child.slot,
                         code, child.streak, STABLE_AFTER, delay, child.restarts)
        else:
            logger.warning("replica %s#%s exited with %s; restarting in %.1f s (restart %d)",
                           child.stage, child.slot, code, delay, child.restarts)
        await asyncio.sleep(delay)
        if not self._stopping and not self._retire(child):
            await self._spawn(child)

    def _retire(self, child: _Child) -> bool:
        """Whether ``child``'s slot is gone (a rescale removed it): then it leaves for good."""
        if not child.retired and child.slot < self.router.core.count[child.stage]:
            return False
        child.retired = True
        if self._placed.get((child.stage, child.slot)) is child:
            del self._placed[(child.stage, child.slot)]
        if child in self.children:
            self.children.remove(child)
        return True

    def _silent(self, stage: str, slot: int) -> None:
        # The router marked this replica down (no heartbeat): a stopped or wedged process. Its
        # work has gone elsewhere; kill it (SIGKILL reaches a stopped process too) so that it
        # restarts, rather than wake up later to a closed socket.
        if self._ray is not None:
            self._ray.restart(stage, slot)  # Ray starts the actor again
        for child in self.children:
            if (child.stage, child.slot) == (stage, slot) and child.process is not None \
                    and child.process.returncode is None:
                child.process.send_signal(signal.SIGKILL)

    def crash_looping(self) -> list[str]:
        """``stage#slot`` of every replica in a crash loop (see CRASH_LOOP)."""
        now = time.monotonic()
        return [f"{c.stage}#{c.slot}" for c in self.children if not c.retired and c.crash_looping(now)]

    def kill(self, stage: str, slot: int = 0) -> int:
        """Kill -9 a replica (for fault tests); returns its pid. The supervisor (or Ray, for an
        actor on this machine) restarts it."""
        if self._ray is not None and (stage, slot) in self._ray.replicas:
            return self._ray.kill(stage, slot)
        for child in self.children:
            if child.stage == stage and child.slot == slot and child.process is not None \
                    and not child.retired:
                child.process.send_signal(signal.SIGKILL)
                return child.process.pid
        raise KeyError(f"{stage}#{slot}")

    def kill_now(self) -> None:
        """Kill every replica process (and what it started: SIGKILL to its process group) and
        remove the socket directory, without waiting; for ``altoflow serve``'s second signal.
        Synchronous, so that a signal handler can call it."""
        self._stopping = True
        for child in self.children:
            process = child.process
            if process is None or process.returncode is not None:
                continue
            try:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the group is its own
            except ProcessLookupError:  # not its own group yet (just started), or gone
                try:
                    os.kill(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # it has exited already
        if self._ray is not None:
            self._ray.stop(shutdown=False)  # in a signal handler: the process's exit ends Ray
        if hasattr(self, "dir"):
            shutil.rmtree(self.dir, ignore_errors=True)

    async def stop(self, grace: float = 5) -> None:
        if self._stopping:
            return
        self._stopping = True
        await self.router.close()
        procs = [c.process for c in self.children if c.process is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), grace)
        except asyncio.TimeoutError:
            for p in procs:
                if p.returncode is None:
                    p.kill()
            await asyncio.gather(*(p.wait() for p in procs))
        for task in list(self._tasks):
            task.cancel()
        inline = list(self._inline_tasks)
        for task in inline:
            task.cancel()
        await asyncio.gather(*inline, return_exceptions=True)
        if self._ray is not None:
            self._ray.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
