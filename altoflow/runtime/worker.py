"""A replica: one process running one stage, connected to the router by one socket.

``run_worker(target, stage, slot, connect=...)``, which ``altoflow worker`` (and ``python -m
altoflow.runtime.worker``, the same command line) calls, loads the target, creates a class
stage's instance (``__init__`` runs once, before the replica announces itself), says HELLO, and
then serves frames until the router goes away or says SHUTDOWN:

- DATA: run the stage on one input, with up to ``concurrency`` invocations at a time; every
  output goes back as a DATA frame the moment it exists, then an ACK with the status;
- OPEN / FLUSH: a group of this (aggregate) replica exists / is complete; FLUSH is answered by
  the group's outputs and FLUSH_DONE;
- CANCEL: the request is over: its invocations are cancelled (and acknowledged as dropped) and
  its groups forgotten;
- CREDIT: a fan-out invocation may send ``FANOUT_CREDIT`` more outputs. Each one starts with
  ``FANOUT_WINDOW`` and, with none left, pulls nothing more from its generator until a CREDIT
  comes (the router grants it as the items' downstream work leaves its queues). While it waits
  it does not count against ``concurrency``: the router lends its place to other work.

A stage's ``altoflow.partial(delta)`` goes to the router as a PARTIAL frame, before the
invocation's outputs and ACK.

Frames out are coalesced and written once per event-loop turn, or at once when the invocation
that wrote them was the only one running (nothing could join the write).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
from collections import deque
from typing import Any, Callable

from altoflow import _tracing
from altoflow._errors import user_traceback
from altoflow.compiler import load_target
from altoflow import wire as fr
from altoflow.wire import Codec, EncodeError
from altoflow.runtime.core import ErrorInfo, Status
from altoflow.runtime.pipe import FrameList, Local
from altoflow.runtime.fusion import FusedErrorBody, FusedRunner
from altoflow.runtime.runner import Rest, StageRunner
from altoflow.runtime.tls import TlsConfigError, client_context

_DATA, _CREDIT, _PARTIAL = fr.Kind.DATA, fr.Kind.CREDIT, fr.Kind.PARTIAL

logger = logging.getLogger("altoflow.worker")


class _Undecodable(Exception):
    def __init__(self, name: str, cause: Exception) -> None:
        self.name, self.cause = name, cause


class WorkerError(Exception):
    """A replica's connection to its router broke on a protocol error; the message says which."""


class WorkerStartError(WorkerError):
    """A replica could not start or was not let in by its router; the message says why and the fix."""


class Worker:
    """One replica of one stage. ``local_out`` (an inline replica whose consumers are all inline
    too) sends its outputs as ``Local`` objects instead of encoding them (see ``runtime.pipe``).
    ``watched`` (an inline replica: its router's ``partials_wanted``) says by request id whether
    a request's client wants partials; where it is None, every partial goes to the router."""

    def __init__(self, target: str, stage: str, slot: int, codec: Codec, barrier: bool = False,
                 local_out: bool = False, fuse: str | None = None, fused_local_out: bool = False,
                 on_fused_drop: Callable[[int, ErrorInfo], None] | None = None,
                 watched: Callable[[int], bool] | None = None) -> None:
        self.compiled = load_target(target).compiled
        self.plan = self.compiled.plan
        if stage not in self.compiled.specs:
            raise WorkerStartError(f"{target} has no stage {stage!r}; pass one of its stages "
                                   f"to --stage: {', '.join(self.plan.names)}")
        self.stage = self.plan.stage(stage)
        self.stage_index = self.plan.names.index(stage)
        self.spec = self.compiled.specs[stage]
        self.slot = slot
        self.replica = f"{stage}#{slot}"
        self.codec = codec
        self.annotations = {p.name: p.annotation for p in self.spec.params}
        fn = self.spec.obj().__call__ if self.spec.is_class else self.spec.obj
        # A fan-out invocation's outputs it may send in all (paced by CREDIT), and a future for
        # one that waits for more. A fused fan-out's items stay here: nothing to pace.
        self.paced = (self.spec.is_generator and self.spec.aggregate is None and not barrier
                      and fuse is None)
        self.credit: dict[tuple[int, ...], int] = {}
        self.waiting: dict[tuple[int, ...], asyncio.Future[None]] = {}
        self.runner: StageRunner | FusedRunner = StageRunner(
            self.spec, self.stage, fn, self._emit, barrier=barrier,
            pace=self._pace if self.paced else None, partial=self._partial, watched=watched)
        if fuse is not None:
            # This fan-out folds its items into the aggregate `fuse` itself (runtime.fusion):
            # what goes out is that stage's result, as its own replica would send it.
            spec, plan = self.compiled.specs[fuse], self.plan.stage(fuse)
            index = self.plan.names.index(fuse)

            def emit_fused(anc: tuple[int, ...], value: Any) -> None:
                payload = Local(value) if fused_local_out else self.codec.encode(value)
                self.writer.item(_DATA, index, anc[0], anc[1:], payload)
                self._queued()

            def partial_fused(anc: tuple[int, ...], delta: str) -> None:
                self.writer.item(_PARTIAL, index, anc[0], anc[1:], delta)  # inline: the str
                self._queued()

            fused = StageRunner(spec, plan, spec.obj().__call__ if spec.is_class else spec.obj,
                                emit_fused, barrier=barrier, partial=partial_fused, watched=watched)
            self.runner = FusedRunner(self.runner, fused, on_fused_drop or (lambda request, error: None))
        self.writer: fr.FrameWriter | FrameList = fr.FrameWriter()
        self.reader: fr.FrameReader | FrameList = fr.FrameReader()
        self.local_out = local_out
        self.tasks: dict[int, set[asyncio.Task]] = {}  # request id -> its running invocations
        self.running: dict[asyncio.Task, tuple[int, ...]] = {}  # invocation -> its ancestry
        # Inputs beyond `concurrency`, from a router that does not keep to its credits.
        self.backlog: deque[tuple[tuple[int, ...], tuple[bytes, ...], bytes]] = deque()
        self._flush_scheduled = False

    # -- output ---------------------------------------------------------------------------

    def _send(self, kind: fr.Kind, **fields: Any) -> None:
        self.writer.send_nowait(kind, stage=self.stage_index, **fields)
        self._queued()

    def _queued(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self.writer.flush()
        if data and not self.transport.is_closing():
            if type(self.writer) is FrameList:
                self.transport.write_now(data)  # in memory: the router reads it now (runtime.pipe)
            else:
                self.transport.write(data)

    def _emit(self, anc: tuple[int, ...], value: Any) -> None:
        payload = Local(value) if self.local_out else self.codec.encode(value)
        self.writer.item(_DATA, self.stage_index, anc[0], anc[1:], payload)
        self._queued()

    def _partial(self, anc: tuple[int, ...], delta: str) -> None:
        """The stage's ``altoflow.partial(delta)``: a PARTIAL frame, ahead of the invocation's
        output and ACK on the same FIFO link. An inline replica hands the str over as it is."""
        payload: Any = delta if type(self.writer) is FrameList else delta.encode("utf-8", "backslashreplace")
        self.writer.item(_PARTIAL, self.stage_index, anc[0], anc[1:], payload)
        self._queued()

    def _status(self, kind: fr.Kind, anc: tuple[int, ...], status: Status, error: ErrorInfo | None) -> None:
        """ACK or FLUSH_DONE with the status; a failure carries what is known of the error."""
        if error is None:
            self.writer.item(kind, self.stage_index, anc[0], anc[1:], status=fr.STATUS_CODES[status])
            self._queued()
            return
        # The user's traceback travels to the router, which logs it with the request's id
        # (only the router knows that) and puts it in the request's error event. Text that is
        # not UTF-8 (a lone surrogate in an exception's message) goes escaped, or the frame
        # could not be encoded and the router would never hear of this item's credit.
        traceback = user_traceback(error.exception) if error.exception is not None else ""
        message, exc_type = _escaped(error.detail), _escaped(error.exc_type or "")
        if error.stage == self.stage.name:
            body = fr.ErrorBody(message, exc_type, _escaped(traceback))
        else:  # where a fused invocation failed: in the stage folded into this one
            body = FusedErrorBody(message, exc_type, _escaped(traceback), error.stage,
                                  dict(error.ancestry))
        self.writer.send_nowait(kind, stage=self.stage_index, request_id=anc[0], ancestry=anc[1:],
                                status=fr.STATUS_CODES[status], body=body)
        self._queued()

    def _pace(self, anc: tuple[int, ...], emitted: int) -> asyncio.Future[None] | None:
        """None while the invocation on ``anc`` may send another output, else what to wait for."""
        if emitted < self.credit.get(anc, fr.FANOUT_WINDOW):
            return None
        waiter = self.waiting.get(anc)
        if waiter is None or waiter.done():
            waiter = self.waiting[anc] = asyncio.get_running_loop().create_future()
        return waiter

    # -- input ----------------------------------------------------------------------------

    def handle(self, frame: fr.Frame) -> None:
        anc = (frame.request_id, *frame.ancestry)
        if frame.kind is _DATA:
            # An invocation that waits for credit does not count: the router lends its place.
            if len(self.running) - len(self.waiting) < self.stage.concurrency:
                self._start(anc, frame.parts(), frame.trace)
            else:
                # The router keeps to the credits it gave (concurrency), so this only happens
                # if a peer does not; the input waits for a free slot all the same.
                self.backlog.append((anc, frame.parts(), frame.trace))
        elif frame.kind is _CREDIT:
            if anc in self.credit:  # not for an invocation that has ended
                self.credit[anc] += fr.FANOUT_CREDIT
                waiter = self.waiting.pop(anc, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
        elif frame.kind == fr.Kind.OPEN:
            status, error = self._group_call(self.runner.open, anc)
            if status == "failed":
                self._status(fr.Kind.FLUSH_DONE, anc, status, error)
        elif frame.kind == fr.Kind.FLUSH:
            status, error = self._group_call(self.runner.flush, anc, opened=frame.opened)
            self._status(fr.Kind.FLUSH_DONE, anc, status, error)
        elif frame.kind == fr.Kind.CANCEL:
            self.runner.abort(frame.request_id)
            for task in self.tasks.pop(frame.request_id, ()):
                task.cancel()
            if self.backlog:
                waiting = self.backlog
                self.backlog = deque(w for w in waiting if w[0][0] != frame.request_id)
                for anc_, _parts, _trace in waiting:
                    if anc_[0] == frame.request_id:
                        self._status(fr.Kind.ACK, anc_, "dropped", None)
        elif frame.kind == fr.Kind.READY:
            ready = frame.body
            if not isinstance(ready, fr.Ready) or ready.stage_index != self.stage_index:
                raise fr.RemoteProtocolError(
                    f"the router numbers stage {self.stage.name!r} {getattr(ready, 'stage_index', '?')},"
                    f" this replica {self.stage_index}: router and replica loaded different pipelines")
            if self.secret is not None:
                fr.verify_proof(fr.router_proof(self.secret, self.challenge, self.hello), ready.proof,
                                peer="the router")
            self.ready = True
            logger.info("replica %s#%d is in: serving stage '%s'", self.stage.name, self.slot,
                        self.stage.name)
        elif frame.kind == fr.Kind.CHALLENGE and self.secret is not None and self.hello is None:
            self.challenge = frame.body.nonce  # type: ignore[union-attr]
            self._hello(nonce=os.urandom(fr.NONCE_SIZE))
        elif frame.kind == fr.Kind.SHUTDOWN:
            self.shut_down = True  # the router's word, not a lost connection (runtime.ray_placement)
            self.done.set()
        elif frame.kind != fr.Kind.HEARTBEAT:
            raise fr.RemoteProtocolError(f"a replica does not take {frame.kind.name} frames")

    def _group_call(self, call: Any, anc: tuple[int, ...], **kw: Any) -> tuple[Status, ErrorInfo | None]:
        """Open or flush a group. The runner turns the operator's own errors into a status; what
        is left (its result cannot be encoded) fails the group here, and the replica serves on."""
        try:
            return call(anc, **kw)
        except Exception as exc:
            return "failed", ErrorInfo(
                self.stage.name, dict(zip(self.stage.route_key or [], anc[1:])),
                f"cannot send the group's result: {exc}", type(exc).__name__)

    def _start(self, anc: tuple[int, ...], parts: tuple[bytes, ...], trace: bytes = b"") -> None:
        # A trace context (the router traces) is used only if this replica traces too.
        if trace and _tracing.TRACER is None:
            trace = b""
        if self.paced:
            self.credit[anc] = fr.FANOUT_WINDOW
        rest = None
        runner = self.runner
        if not trace and (runner.runs_now or runner.fans_out_now):
            # A short sync call, or a fast sync generator: run here and now, with no task
            # (StageRunner.invoke_now, fan_out_now); a generator that has to wait, for credit,
            # a checkpoint or a thread, goes on in a task.
            begin = runner.invoke_now if runner.runs_now else runner.fan_out_now
            try:
                outcome = begin(anc, self._kwargs(parts))
            except Exception as exc:
                outcome = "failed", self._unsent(anc, exc)
            if type(outcome) is tuple:
                if self.paced:
                    self.credit.pop(anc, None)
                    self.waiting.pop(anc, None)
                self._status(fr.Kind.ACK, anc, *outcome)
                return
            rest = outcome
        task = asyncio.get_running_loop().create_task(self._invoke(anc, parts, trace, rest))
        self.running[task] = anc
        tasks = self.tasks.get(anc[0])
        if tasks is None:
            tasks = self.tasks[anc[0]] = set()
        tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        anc = self.running.pop(task)
        if self.paced:
            self.credit.pop(anc, None)
            self.waiting.pop(anc, None)
        tasks = self.tasks.get(anc[0])
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self.tasks[anc[0]]
        if task.cancelled():
            # Cancelled before it started (a CANCEL in the same read as its DATA): _invoke never
            # ran, so acknowledge here, or the router would wait for this credit forever.
            self._status(fr.Kind.ACK, anc, "dropped", None)
        while self.backlog and len(self.running) - len(self.waiting) < self.stage.concurrency:
            self._start(*self.backlog.popleft())

    async def _invoke(self, anc: tuple[int, ...], parts: tuple[bytes, ...], trace: bytes = b"",
                      rest: Rest | None = None) -> None:
        # `rest`: the rest of an invocation that fan_out_now began (its inputs already taken).
        try:
            if rest is not None:
                status, error = await rest()
            elif trace:
                status, error = await self.runner.invoke_traced(
                    anc, self._kwargs(parts), _tracing.from_bytes(trace), self.replica)
            else:
                status, error = await self.runner.invoke(anc, self._kwargs(parts))
        except asyncio.CancelledError:
            status, error = "dropped", None  # the request was cancelled: acknowledge, quietly
        except Exception as exc:
            status, error = "failed", self._unsent(anc, exc)
        self._status(fr.Kind.ACK, anc, status, error)
        if len(self.running) == 1:
            # No other invocation is running, so none can join this write: send it now rather
            # than in the next loop turn (a turn of latency on every lone request).
            self._flush()

    def _kwargs(self, parts: tuple[Any, ...]) -> dict[str, Any]:
        kwargs = {}
        for name, part in zip(self.stage.params, parts):
            # A Local is an inline stage's output itself (runtime.pipe): nothing to decode.
            if type(part) is Local:
                kwargs[name] = part.value
                continue
            try:
                kwargs[name] = self.codec.decode(part, self.annotations.get(name))
            except Exception as exc:
                raise _Undecodable(name, exc) from exc
        return kwargs

    def _unsent(self, anc: tuple[int, ...], exc: Exception) -> ErrorInfo:
        """The error of an invocation whose input could not be decoded (the stage never ran)
        or whose output could not be sent on."""
        if isinstance(exc, _Undecodable):
            name, exc = exc.name, exc.cause
            detail = (f"cannot decode parameter {name!r} as {self.annotations.get(name)!r}: {exc}; "
                      f"the stage that produces '{name}' must return what this annotation says")
        elif isinstance(exc, EncodeError):  # the stage ran and returned what the codec cannot carry
            detail = f"stage '{self.stage.name}' returned a value that cannot be sent on: {exc}"
        else:
            detail = f"cannot send the stage's output: {exc}"
        return ErrorInfo(self.stage.name, dict(zip(self.stage.levels_in, anc[1:])), detail,
                         type(exc).__name__)

    # -- connection -----------------------------------------------------------------------

    def _hello(self, nonce: bytes = b"") -> None:
        hello = fr.Hello(stage=self.stage.name, slot=self.slot, pid=os.getpid(), nonce=nonce)
        if self.secret is not None:
            proof = fr.replica_proof(self.secret, self.challenge, hello)
            hello = fr.Hello(hello.stage, hello.slot, hello.protocol_version, hello.pid,
                             nonce, proof)
        self.hello = hello
        self._send(fr.Kind.HELLO, body=hello)

    async def _beat(self, interval: float) -> None:
        # The router marks a replica that has sent nothing for a while as down (a stopped or
        # wedged process): a HEARTBEAT every `interval` seconds says this one is alive.
        while True:
            await asyncio.sleep(interval)
            if self.ready:
                self._send(fr.Kind.HEARTBEAT)

    async def serve(self, address: str, secret: bytes | None = None,
                    tls: ssl.SSLContext | None = None, heartbeat: float = 1.0, *,
                    connect: Callable[[Callable[[], asyncio.Protocol]], asyncio.BaseTransport] | None = None,
                    ) -> None:
        """Serve frames from the router at ``address``: a UNIX socket path, or HOST:PORT (TCP,
        which needs the router's shared ``secret``, and ``tls``, from
        ``altoflow.runtime.tls.client_context``, when the router serves TLS); a HEARTBEAT goes
        out every ``heartbeat`` seconds. ``connect``, given a protocol factory, returns the
        transport of a connection made some other way (``Router.connect_inline``: an inline
        replica in the router's process); ``address`` then only names it."""
        loop = asyncio.get_running_loop()
        self.done = asyncio.Event()
        worker = self

        class Proto(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                try:
                    for frame in worker.reader.feed(data):
                        worker.handle(frame)
                except fr.ProtocolError as exc:
                    worker.error = exc  # serve() raises it once the connection is down
                    worker.transport.close()

            def connection_lost(self, exc: Exception | None) -> None:
                worker.done.set()

        self.secret, self.challenge, self.hello = None, b"", None
        self.ready, self.error, self.shut_down = False, None, False
        me = f"replica {self.stage.name}#{self.slot}"
        try:
            if connect is not None:
                # In memory, in the router's process: frames cross as objects (runtime.pipe).
                self.writer = self.reader = FrameList()
                self.transport = connect(Proto)
                self._hello()
            elif is_tcp(address):
                if not secret:
                    raise WorkerStartError(f"{me}: a TCP router needs the shared secret "
                                           f"(--secret-file PATH or ALTOFLOW_SECRET)")
                self.secret = secret
                host, _, port = address.rpartition(":")
                self.transport, _ = await loop.create_connection(Proto, host, int(port), ssl=tls)
                # HELLO goes out when the router's CHALLENGE arrives.
            else:
                if tls is not None:
                    raise WorkerStartError(f"{me}: --tls-ca is for a TCP router (HOST:PORT); "
                                           f"{address} is a UNIX socket")
                self.transport, _ = await loop.create_unix_connection(Proto, address)
                self._hello()
        except ssl.SSLCertVerificationError as exc:
            raise WorkerStartError(
                f"{me}: the router at {address} is not the one --tls-ca trusts "
                f"({exc.verify_message}); give --tls-ca the CA that signed the router's "
                f"--tls-cert, and connect by a name that certificate holds") from exc
        except (ssl.SSLError, ConnectionError) as exc:
            if tls is None:
                raise WorkerStartError(f"{me}: cannot connect to the router at {address} ({exc})") from exc
            raise WorkerStartError(
                f"{me}: the TLS handshake with the router at {address} failed ({exc}); check "
                f"that the router serves TLS (`altoflow serve --tls-cert ... --tls-key ...`), "
                f"or leave out --tls-ca if it does not") from exc
        except OSError as exc:
            raise WorkerStartError(f"{me}: cannot connect to the router at {address} ({exc}); "
                                   f"start `altoflow serve` first (with --listen for TCP)") from exc
        beat = loop.create_task(self._beat(heartbeat))
        await self.done.wait()
        beat.cancel()
        for tasks in list(self.tasks.values()):
            for task in tasks:
                task.cancel()
        self.transport.close()
        if not self.ready:
            why = f" ({self.error})" if self.error is not None else ""
            if is_tcp(address) and tls is None and not self.challenge and self.error is None:
                # A plain-TCP router says CHALLENGE at once; a TLS one waits for a TLS hello
                # and hangs up when its handshake timeout passes.
                raise WorkerStartError(
                    f"{me}: the router at {address} hung up without saying a word: if it serves "
                    f"TLS (`altoflow serve --tls-cert`), pass its CA with --tls-ca PATH; if not, it "
                    f"turned the connection away (too many connecting at once: its log says so)")
            raise WorkerStartError(
                f"{me}: the router at {address} hung up before letting it in{why}; check that "
                f"router and replica share the secret and the target, and that slot {self.slot} "
                f"is not taken (the router's log says which)") from self.error
        if self.error is not None:
            raise WorkerError(f"{me}: {self.error}") from self.error


def _escaped(text: str) -> str:
    """``text`` with what UTF-8 cannot hold (lone surrogates) as backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def is_tcp(address: str) -> bool:
    """``HOST:PORT`` is a TCP address, unless a file of that name exists (a UNIX socket path)."""
    _, sep, port = address.rpartition(":")
    return bool(sep) and port.isdigit() and not os.path.exists(address)


def run_worker(target: str, stage: str, slot: int = 0, *, connect: str, secret: bytes = b"",
               allow_pickle: bool = False, barrier: bool = False, tls_ca: str | None = None,
               heartbeat: float = 1.0) -> None:
    """Run one replica of ``stage`` until its router at ``connect`` (a UNIX socket path, or
    HOST:PORT over TCP with the router's shared ``secret``) says SHUTDOWN or goes away. With
    ``tls_ca`` the connection is TLS, and the router's certificate must chain to that CA file.

    When the router goes while calls of a sync stage still run in their threads, which
    nothing can interrupt, the process exits at once (``os._exit(0)``) rather than wait for them.

    Raises ``CompileError`` if the target does not load, ``WorkerStartError`` if the replica
    cannot start or is not let in, and ``WorkerError`` if the connection breaks on a protocol
    error later.
    """
    try:
        tls = client_context(tls_ca) if tls_ca is not None else None
    except TlsConfigError as exc:
        raise WorkerStartError(f"replica {stage}#{slot}: {exc}") from exc
    transport = "tcp" if is_tcp(connect) else "unix"
    worker = Worker(target, stage, slot, Codec(allow_pickle=allow_pickle, transport=transport),
                    barrier=barrier)
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        asyncio.run(worker.serve(connect, secret, tls, heartbeat))
    else:
        uvloop.run(worker.serve(connect, secret, tls, heartbeat))
    _tracing.flush()  # before an os._exit, or the spans of the last invocations are lost
    if worker.runner.threads_busy:
        # Python waits for every thread at exit, and a sync stage's call may never end (or not
        # for an hour): a replica whose router has gone, or said SHUTDOWN, must not live on.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

