"""The ``altoflow`` command."""

from __future__ import annotations

import json
import os
import socket
import sys
import sysconfig
import time
import traceback
from enum import Enum
from typing import Any, NoReturn, Optional

import anyio
import typer

from altoflow._errors import CompileError, InputError, StageError
from altoflow._result import Event

app = typer.Typer(
    name="altoflow",
    help="Compile, run and serve compound AI pipelines written as @stage functions.\n\n"
         "A TARGET is app.py, app.py:name or package.module:name. Try:\n\n"
         "altoflow compile app.py  ·  altoflow run app.py --input '{\"q\": \"...\"}'  ·  "
         "altoflow serve app.py --port 8000\n\n"
         "Docs: docs/cli.md and docs/serving.md in the altoflow repository.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from altoflow import __version__

        typer.echo(f"altoflow {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print altoflow's version and exit."),
) -> None:
    pass


class LogLevel(str, Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"
    critical = "critical"


class LogFormat(str, Enum):
    text = "text"
    json = "json"


def _log_level(default: LogLevel) -> Any:
    return typer.Option(default, "--log-level", envvar="ALTOFLOW_LOG_LEVEL", case_sensitive=False,
                        help="The least severe log records shown (on stderr).")


def _log_format() -> Any:
    return typer.Option(LogFormat.text, "--log-format", envvar="ALTOFLOW_LOG_FORMAT",
                        case_sensitive=False,
                        help="text: one line per record; json: one JSON object per line (time, "
                             "level, logger, message, request_id, stage, ancestry, replica).")


def _otel() -> Any:
    return typer.Option(False, "--otel", envvar="ALTOFLOW_OTEL",
                        help="OpenTelemetry spans of requests and stage invocations, exported as "
                             "the OTEL_* variables say (OTLP by default); needs altoflow[otel].")


def _enable_tracing(otel: bool) -> None:
    """``--otel``: tracing on in this process, or exit 2 with what to install or fix."""
    if not otel:
        return
    from altoflow import _tracing

    try:
        _tracing.enable()
    except ImportError as exc:
        _fail(f"--otel: {exc}", 2)
    except ValueError as exc:
        _fail(f"--otel: {exc}", 2)


class GraphFormat(str, Enum):
    text = "text"
    json = "json"
    mermaid = "mermaid"
    dot = "dot"
    svg = "svg"


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _cwd_on_path() -> None:
    # Like uvicorn (--app-dir .): a module target is looked up from the current directory.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _load(target: str) -> Any:
    from altoflow.compiler import load_target

    _cwd_on_path()
    path = target if os.path.isdir(target) else target.partition(":")[0]
    if os.path.isdir(path):
        _fail(f"{target!r} is a directory; name a file in it (e.g. {os.path.join(path, 'app.py')})"
              f" or a module (package.module[:name])", 2)
    try:
        pipeline = load_target(target)
        return pipeline.compiled
    except CompileError as exc:
        _fail(str(exc), 2)
    except SyntaxError as exc:  # the user's file does not parse
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else target
        text = f"\n    {exc.text.strip()}" if exc.text else ""
        _fail(f"cannot load {target}: {where}: {type(exc).__name__}: {exc.msg}{text}", 2)
    except Exception as exc:  # importing it raised: a failing import, a misused @stage
        _fail(f"cannot load {target}: {_where(exc)}{type(exc).__name__}: {exc}{_hint(exc)}", 2)


def _where(exc: BaseException) -> str:
    """``file:line: `` of the user's code the exception came from (the last frame outside
    altoflow, the import machinery and installed packages), and that line."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = os.path.dirname(os.path.abspath(__file__))
    installed = {sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")}
    user = [f for f in frames if not f.filename.startswith((ours, "<", *installed))]
    frame = (user or frames or [None])[-1]
    if frame is None:
        return ""
    line = f"\n    {frame.line}\n  " if frame.line else " "
    return f"{frame.filename}:{frame.lineno}:{line}"


def _hint(exc: BaseException) -> str:
    """For ``@stage(misspelt=...)``: the option it is close to."""
    import difflib
    import inspect

    from altoflow import stage

    words = str(exc).split("unexpected keyword argument ")
    if not isinstance(exc, TypeError) or len(words) != 2 or not str(exc).startswith("stage()"):
        return ""
    name = words[1].strip("'\"")
    options = [p for p in inspect.signature(stage).parameters if p != "fn"]
    near = difflib.get_close_matches(name, options, n=1)
    suggestion = f"did you mean {near[0]}=? " if near else ""
    return f"\n  {suggestion}@stage takes: {', '.join(options)}"


@app.command()
def compile(
    target: str = typer.Argument(..., help="app.py, app.py:name or package.module:name"),
    show_graph: bool = typer.Option(False, "--show-graph", help="Print the graph (the default)."),
    format: GraphFormat = typer.Option(GraphFormat.text, "--format", "-f", help="Output format."),
) -> None:
    """Check a pipeline and print what altoflow infers: stages, level stacks, keys, replicas.

    altoflow compile app.py

    altoflow compile app.py --format json

    altoflow compile app.py --format dot | dot -Tpng > graph.png
    """
    from altoflow.compiler.render import FORMATS, terminal_width, to_text

    if show_graph and format is not GraphFormat.text:
        _fail(f"--show-graph prints the text picture; drop it, or drop --format {format.value}", 2)
    compiled = _load(target)
    if format is GraphFormat.text:  # as wide as the terminal (80 columns when not a terminal)
        typer.echo(to_text(compiled.plan, terminal_width()), nl=False)
    else:
        typer.echo(FORMATS[format.value](compiled.plan), nl=False)


@app.command()
def run(
    target: str = typer.Argument(..., help="app.py, app.py:name or package.module:name"),
    input: str = typer.Option("{}", "--input", "-i", help="The request fields as a JSON object."),
    events: bool = typer.Option(False, "--events", help="Print every event as it happens (NDJSON)."),
    show_traceback: bool = typer.Option(False, "--traceback",
                                        help="When a stage fails, print its traceback (on stderr)."),
    timeline: Optional[str] = typer.Option(
        None, "--timeline", metavar="OUT.html|OUT.png",
        help="Draw the request's timeline (one row per stage, one bar per item) to this file: "
             ".html is self-contained, .png needs matplotlib."),
    log_level: LogLevel = _log_level(LogLevel.warning),
    log_format: LogFormat = _log_format(),
    otel: bool = _otel(),
) -> None:
    """Run one request in this process (the reference executor) and print its result as JSON.

    altoflow run app.py --input '{"question": "the with statement"}'

    altoflow run app.py --events --traceback --input '{"question": "lambda"}'

    altoflow run app.py --input '{"question": "lambda"}' --timeline timeline.html
    """
    from altoflow import _logging
    from altoflow.runtime.local import execute
    from altoflow._result import encode_event, jsonable

    _logging.configure(log_level.value, log_format.value)
    _enable_tracing(otel)

    try:
        fields = json.loads(input)
    except json.JSONDecodeError as exc:
        _fail(f"--input is not valid JSON ({exc}); pass an object like '{{\"question\": \"...\"}}'", 2)
    if not isinstance(fields, dict):
        _fail(f"--input must be a JSON object of request fields, not {type(fields).__name__}", 2)
    recording = _timeline_recording(timeline)
    compiled = _load(target)

    unsendable: list[Event] = []

    def show(event: Event) -> None:
        # The lines POST /v1/run would stream: an output that has no JSON form is an error line,
        # and the stream ends there.
        if unsendable:
            return
        line, ended = encode_event(event)
        sys.stdout.write(line.decode())
        sys.stdout.flush()
        if ended and event.type == "output":
            unsendable.append(event)

    def start() -> Any:
        if recording is not None:  # the request starts now, not when the command did
            recording.started = time.perf_counter()
        return execute(compiled, fields, on_event=show if events else None, timeline=recording)

    try:
        try:
            result = anyio.run(start)
        finally:
            if recording is not None and len(recording):
                _draw_timeline(timeline, recording, compiled)  # type: ignore[arg-type]
    except InputError as exc:
        _fail(str(exc), 2)
    except StageError as exc:
        if not events:  # with --events the error event was printed already
            typer.echo(f"error: {exc}", err=True)
        if show_traceback and exc.traceback:
            typer.echo(exc.traceback.rstrip("\n"), err=True)
        elif not events:
            typer.echo("  (--traceback shows the stage's traceback)", err=True)
        raise typer.Exit(1)
    if unsendable:
        raise typer.Exit(1)
    if not events:
        try:
            out = {name: jsonable(value, f"stage '{name}' output") for name, value in result.to_dict().items()}
        except (TypeError, ValueError) as exc:
            _fail(f"{exc}. Return JSON-like values (str, int, float, bool, None, lists, dicts with str "
                  f"keys), numpy arrays, pydantic models, dataclasses or bytes, or convert it in a stage.", 1)
        typer.echo(json.dumps(out, ensure_ascii=False, indent=2))


def _timeline_recording(path: Optional[str]) -> Any:
    """A recording for ``run --timeline PATH``, after checking that PATH can be drawn."""
    if path is None:
        return None
    from altoflow.runtime.timeline import Recording

    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".html", ".htm", ".png"):
        _fail(f"--timeline takes a file ending in .html (self-contained) or .png (needs "
              f"matplotlib), not {path!r}", 2)
    if suffix == ".png":
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            _fail("--timeline with a .png file needs matplotlib, which is not installed: pip "
                  "install matplotlib (or name a .html file, which needs nothing)", 2)
    return Recording(0, "run", limit=1_000_000)


def _draw_timeline(path: str, recording: Any, compiled: Any) -> None:
    from altoflow._timeline_draw import TimelineDrawError, draw
    from altoflow.runtime.timeline import plan_replicas, timeline_json

    doc = timeline_json(recording, compiled.plan, plan_replicas(compiled.plan))
    try:
        draw([(f"{compiled.plan.name}: altoflow run", doc)], path)
    except (TimelineDrawError, OSError) as exc:
        _fail(f"--timeline: {exc}", 2)
    typer.echo(f"timeline: {path} ({len(doc['invocations'])} invocations)", err=True)


def _replica_counts(values: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        for item in value.split(","):
            name, sep, n = item.partition("=")
            if not sep or not n.strip().isdigit() or int(n) < 1:
                _fail(f"--replicas takes NAME=N with N >= 1 (e.g. --replicas bm25=4), not {item!r}", 2)
            counts[name.strip()] = int(n)
    return counts


@app.command()
def serve(
    target: str = typer.Argument(..., help="app.py, app.py:name or package.module:name"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    replicas: list[str] = typer.Option([], "--replicas", help="NAME=N: override a stage's replicas."),
    max_inflight: int = typer.Option(1024, "--max-inflight", help="Requests in flight before 503."),
    barrier: bool = typer.Option(False, "--barrier",
                                 help="Hold each invocation's outputs until it returns (baseline)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                      help="Pickle values the codec cannot encode (local sockets only)."),
    listen: Optional[str] = typer.Option(None, "--listen",
                                         help="HOST:PORT for replicas on other machines (TCP)."),
    secret_file: Optional[str] = typer.Option(None, "--secret-file",
                                              help="Shared secret for TCP replicas (or ALTOFLOW_SECRET)."),
    remote: list[str] = typer.Option([], "--remote",
                                     help="A stage whose replicas all run elsewhere (`altoflow worker`)."),
    tls_cert: Optional[str] = typer.Option(None, "--tls-cert",
                                           help="PEM certificate: the --listen port serves TLS only."),
    tls_key: Optional[str] = typer.Option(None, "--tls-key", help="The PEM private key of --tls-cert."),
    handshake_timeout: float = typer.Option(5.0, "--handshake-timeout",
                                            help="Seconds a TCP replica has to get in (TLS, then HELLO)."),
    max_pending: int = typer.Option(64, "--max-pending",
                                    help="TCP connections not yet let in (handshaking) at once; "
                                         "more are closed at once."),
    max_connections: int = typer.Option(1024, "--max-connections",
                                        help="TCP connections in all, let in or not; more are "
                                             "closed at once."),
    grace: float = typer.Option(30.0, "--grace",
                                help="Seconds requests in flight have to finish after SIGTERM or "
                                     "SIGINT before they are cancelled (a second signal: at once)."),
    replay_limit: int = typer.Option(
        100_000, "--replay-limit",
        help="Inputs of open aggregate groups kept, all together, to replay a group whose replica "
             "dies (0: none; such a death fails the group's request)."),
    max_buffered_mib: float = typer.Option(
        4.0, "--max-buffered-mib",
        help="A request's answer the router holds unread, in MiB: past it the request is paused "
             "until its client reads on."),
    max_body: int = typer.Option(1024 * 1024, "--max-body",
                                 help="Largest POST /v1/run body in bytes (413 past it)."),
    allowed_host: list[str] = typer.Option([], "--allowed-host",
                                           help="A name the Host header may have besides the "
                                                "address (repeatable; * for any)."),
    timeline_requests: int = typer.Option(
        100, "--timeline-requests",
        help="Recent requests whose timelines GET /v1/requests/{id}/timeline serves (0: record "
             "none)."),
    timeline_entries: int = typer.Option(
        5000, "--timeline-entries",
        help="Moments recorded per request (about 3 per item); past it its timeline is truncated."),
    timeline_every: int = typer.Option(
        1, "--timeline-every", help="Record the timeline of one request in N (sampling)."),
    route_by_request: bool = typer.Option(
        False, "--route-by-request",
        help="Benchmark knob: route every stage's items by their request (all of a request's "
             "items on one replica of each stage), not only aggregates' by their group."),
    inline: list[str] = typer.Option([], "--inline",
                                     help="A stage (or NAME,NAME, or all) whose replicas run in the "
                                          "router's process: light stages' items then never cross "
                                          "a socket."),
    fuse: bool = typer.Option(True, "--fuse/--no-fuse",
                              help="An inline fan-out folds its items into the inline aggregate "
                                   "that takes only them, skipping the router for each item."),
    ray: bool = typer.Option(False, "--ray",
                             help="Run the replicas as Ray actors, placed by their cpus, gpus and "
                                  "resources and restarted by Ray (docs/ray.md)."),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", envvar="RAY_ADDRESS",
        help="With --ray: the cluster, HOST:PORT of its head (or auto); default: the cluster "
             "this machine has joined with `ray start`, else a Ray of its own."),
    tls_ca: Optional[str] = typer.Option(None, "--tls-ca",
                                         help="With --ray and --tls-cert: the CA certificate the "
                                              "actors trust (default: --tls-cert itself)."),
    admin_token_file: Optional[str] = typer.Option(
        None, "--admin-token-file",
        help="A file holding a secret token: turns on PUT /v1/stages/NAME/replicas "
             "(`altoflow scale`) for requests with `Authorization: Bearer TOKEN`."),
    log_level: LogLevel = _log_level(LogLevel.info),
    log_format: LogFormat = _log_format(),
    otel: bool = _otel(),
) -> None:
    """Serve a pipeline over HTTP: a router and one process per replica (POST /v1/run).

    altoflow serve app.py --port 8000 --replicas verify=4

    curl -N http://127.0.0.1:8000/v1/run -H 'Content-Type: application/json' -d '{"question": "..."}'

    The HTTP API: docs/serving.md; every flag: docs/cli.md.
    """
    from altoflow import _logging
    from altoflow.runtime.supervisor import with_replicas
    from altoflow.server.http import create_app
    from altoflow.server.served import ServedIngress
    from altoflow.server.shutdown import serve_with_grace

    if max_inflight < 1:
        _fail(f"--max-inflight takes N >= 1 (the requests in flight before 503), not {max_inflight}", 2)
    if max_body < 1:
        _fail(f"--max-body takes a number of bytes >= 1, not {max_body}", 2)
    if not max_buffered_mib * 1024 * 1024 >= 1:  # NaN too
        _fail(f"--max-buffered-mib takes MiB above 0 (e.g. 4 or 0.5), not {max_buffered_mib}", 2)
    _check_port("--port", port)
    compiled = _load(target)
    counts = _replica_counts(replicas)
    try:
        with_replicas(compiled, counts)
    except ValueError as exc:
        _fail(str(exc), 2)
    address = None
    if listen is not None:
        # Its own names: --host and --port stay the HTTP address.
        listen_host, _, listen_port = listen.rpartition(":")
        if not listen_port.isdigit():
            _fail(f"--listen takes HOST:PORT (e.g. 0.0.0.0:7000), not {listen!r}", 2)
        _check_port("--listen", int(listen_port))
        address = (listen_host or "0.0.0.0", int(listen_port))
    secret = _secret(secret_file)
    ray_options = _ray_options(ray, ray_address, tls_cert, tls_ca, allow_pickle)
    if address is not None and not secret and ray_options is None:
        _fail("--listen needs a shared secret: --secret-file PATH or ALTOFLOW_SECRET", 2)
    if remote and address is None:
        _fail("--remote stages connect over TCP: add --listen HOST:PORT", 2)
    if replay_limit < 0:
        _fail(f"--replay-limit takes 0 (no replay) or more inputs, not {replay_limit}", 2)
    tls = None
    if (tls_cert is None) != (tls_key is None):
        _fail("TLS needs both --tls-cert PATH and --tls-key PATH", 2)
    if tls_cert is not None:
        from altoflow.runtime.tls import TlsConfigError, server_context

        if address is None and ray_options is None:
            _fail("--tls-cert and --tls-key are for the --listen port: add --listen HOST:PORT", 2)
        try:
            tls = server_context(tls_cert, tls_key)  # type: ignore[arg-type]
        except TlsConfigError as exc:
            _fail(str(exc), 2)
    if not handshake_timeout > 0:
        _fail(f"--handshake-timeout takes seconds above 0, not {handshake_timeout}", 2)
    if max_pending < 1:
        _fail(f"--max-pending takes N >= 1 (TCP connections handshaking at once), not {max_pending}", 2)
    if max_connections < max_pending:
        _fail(f"--max-connections takes N >= --max-pending ({max_pending}), not {max_connections}", 2)
    if not grace >= 0:  # NaN too
        _fail(f"--grace takes seconds, 0 or more (0: cancel requests in flight at once), not {grace}", 2)
    if timeline_requests < 0:
        _fail(f"--timeline-requests takes 0 (record none) or more requests, not {timeline_requests}", 2)
    if timeline_entries < 1:
        _fail(f"--timeline-entries takes N >= 1 (moments recorded per request), not {timeline_entries}", 2)
    if timeline_every < 1:
        _fail(f"--timeline-every takes N >= 1 (record one request in N), not {timeline_every}", 2)
    from altoflow.runtime.timeline import TimelineRecorder

    recorder = TimelineRecorder(timeline_requests, timeline_entries, timeline_every)
    admin_token = None if admin_token_file is None else _token(admin_token_file, "--admin-token-file")
    _check_free(host, port)  # before any replica starts
    _logging.configure(log_level.value, log_format.value)
    # The replicas (`python -m altoflow worker`) inherit the environment: the same logs.
    os.environ["ALTOFLOW_LOG_LEVEL"], os.environ["ALTOFLOW_LOG_FORMAT"] = (
        log_level.value, log_format.value)
    _enable_tracing(otel)  # the supervisor then starts the replicas with --otel
    try:
        ingress = ServedIngress(target, replicas=counts, max_inflight=max_inflight, barrier=barrier,
                                allow_pickle=allow_pickle, listen=address, secret=secret,
                                remote=frozenset(remote), tls=tls,
                                handshake_timeout=handshake_timeout, max_pending=max_pending,
                                max_connections=max_connections, replay_limit=replay_limit,
                                max_buffered=int(max_buffered_mib * 1024 * 1024),
                                inline=frozenset(n.strip() for v in inline for n in v.split(",") if n.strip()),
                                fuse=fuse, timeline=recorder, pin_requests=route_by_request,
                                ray=ray_options,
                                wait_ready=False)  # the port opens first; /healthz: starting
    except ValueError as exc:  # options that do not go together, e.g. --allow-pickle with --listen
        _fail(str(exc), 2)
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    # The --host name is one the Host header may carry (an address is taken anyway).
    names = [host, *allowed_host] if host not in ("0.0.0.0", "::", "") else list(allowed_host)
    app = create_app(ingress, max_body=max_body, allowed_hosts=names, admin_token=admin_token)
    app = _Banner(app, _banner(with_replicas(compiled, counts).plan, host, port, remote, inline,
                               on_ray=ray_options is not None),
                  as_record=log_format is LogFormat.json, ingress=ingress)
    if not serve_with_grace(app, ingress, host=host, port=port, loop=loop, grace=grace,
                            log_level=log_level.value):
        raise typer.Exit(3)  # the startup failed (its message is above), as uvicorn exits


def _banner(plan: Any, host: str, port: int, remote: list[str], inline: list[str],
            on_ray: bool = False) -> str:
    """What serve prints on stderr once it takes requests."""
    from altoflow import __version__

    where = {n.strip(): " remote" for v in remote for n in v.split(",")}
    inlined = {n.strip() for v in inline for n in v.split(",")}
    if "all" in inlined:
        inlined = {s.name for s in plan.stages} - set(where)
    where.update({n: " inline" for n in inlined})
    if on_ray:
        where.update({s.name: " on Ray" for s in plan.stages if s.name not in where})
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    stages = ", ".join(f"{s.name} x{s.replicas}{where.get(s.name, '')}" for s in plan.stages)
    fields = sorted({f for s in plan.stages for f in s.fields})
    body = "{" + ", ".join(f'"{f}": "..."' for f in fields) + "}"
    return "\n".join([
        f"altoflow {__version__} serves {plan.name} on {url}",
        f"  stages: {stages}",
        f"  page:   {url}/ (the graph, a form, a request's events as they arrive)",
        f"  run:    curl -N {url}/v1/run -H 'Content-Type: application/json' -d '{body}'",
        f"  also:   GET {url}/v1/graph, /healthz, /metrics",
        "  docs:   docs/serving.md and docs/cli.md in the altoflow repository; altoflow serve --help",
        "  stop:   Ctrl-C",
    ])


class _Banner:
    """ASGI wrapper: prints ``banner`` on stderr once the app has started and, with an
    ``ingress`` that starts behind the open port, once every replica is in (a start that fails
    prints none); ``as_record``: as a log record instead (JSON logs stay one object per line)."""

    def __init__(self, app: Any, banner: str, as_record: bool = False, ingress: Any = None) -> None:
        self.app = app
        self.banner = banner
        self.as_record = as_record
        self.ingress = ingress
        self._waiting: Any = None  # the task that prints it once the replicas are in

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_and_tell(message: Any) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                if getattr(self.ingress, "wait_started", None) is None:
                    self._tell()
                else:
                    import asyncio

                    self._waiting = asyncio.get_running_loop().create_task(self._tell_when_started())

        try:
            await self.app(scope, receive, send_and_tell)
        finally:
            if self._waiting is not None:
                self._waiting.cancel()

    async def _tell_when_started(self) -> None:
        if await self.ingress.wait_started():
            self._tell()

    def _tell(self) -> None:
        if self.as_record:
            import logging

            logging.getLogger("altoflow.serve").info(self.banner)
        else:
            typer.echo(self.banner, err=True)


def _ray_options(ray: bool, address: Optional[str], tls_cert: Optional[str],
                 tls_ca: Optional[str], allow_pickle: bool) -> Any:
    """``--ray`` as a ``RayOptions`` (None without it); exits 2 on what cannot work."""
    if not ray:
        if tls_ca is not None:
            _fail("serve's --tls-ca is the CA its Ray actors trust: add --ray, or give --tls-ca to "
                  "each `altoflow worker` instead", 2)
        return None
    from altoflow.runtime.ray_placement import RayOptions, RayUnavailable, import_ray

    try:
        import_ray()
    except RayUnavailable as exc:
        _fail(str(exc), 2)
    if allow_pickle:
        _fail("--allow-pickle is for local sockets only; Ray replicas connect over TCP, so it "
              "cannot be used with --ray", 2)
    ca = None
    if tls_cert is not None:
        path = tls_ca or tls_cert
        try:
            ca = open(path).read()
        except OSError as exc:
            _fail(f"cannot read --tls-ca {path}: {exc}", 2)
    return RayOptions(address=(address or "").strip() or None, tls_ca=ca)


def _check_port(option: str, port: int) -> None:
    if not 1 <= port <= 65535:
        _fail(f"{option} takes a port from 1 to 65535, not {port}", 2)


def _check_free(host: str, port: int) -> None:
    """Exit 2 when ``host:port`` cannot be listened on (taken, or not an address here)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        _fail(f"--host {host!r} is not an address of this machine ({exc})", 2)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            _fail(f"cannot listen on {host}:{port}: {exc.strerror}; is another server running "
                  f"there? Pick another --port", 2)


def _token(path: str, option: str) -> str:
    """The token in the file at ``path`` (exit 2 when it cannot be read or is empty)."""
    try:
        token = open(path, encoding="utf-8").read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read {option} {path}: {exc}", 2)
    if not token:
        _fail(f"{option} {path} is empty; put a secret token in it, e.g. `python -c "
              f"\"import secrets; print(secrets.token_hex(32))\" > {path}`", 2)
    return token


@app.command()
def scale(
    url: str = typer.Argument(..., help="The server, e.g. http://127.0.0.1:8000."),
    stage: str = typer.Argument(..., help="The stage to rescale."),
    replicas: int = typer.Argument(..., help="Its replica count from now on (1 or more)."),
    token_file: str = typer.Option(..., "--token-file",
                                   help="The file the server was given as --admin-token-file."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds to wait for the answer."),
) -> None:
    """Change a stage's replica count on a running server (PUT /v1/stages/STAGE/replicas).

    altoflow scale http://127.0.0.1:8000 verify 4 --token-file admin.token

    New replicas start as the stage's others do; removed ones finish what they hold, then stop.
    The server must run with --admin-token-file; docs/serving.md, "Scaling a running server".
    """
    import httpx

    if replicas < 1:
        _fail(f"REPLICAS takes a whole number >= 1 (a stage runs on at least one replica), "
              f"not {replicas}", 2)
    token = _token(token_file, "--token-file")
    endpoint = f"{url.rstrip('/')}/v1/stages/{stage}/replicas"
    try:
        answer = httpx.put(endpoint, json={"replicas": replicas}, timeout=timeout,
                           headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the server at {url}: {exc}; is `altoflow serve` running there?", 1)
    try:
        body = answer.json()
    except ValueError:
        body = {"detail": answer.text.strip()[:200]}
    if answer.status_code != 200:
        _fail(f"{answer.status_code}: {body.get('detail', body)}", 1)
    slots = ", ".join(f"#{s['slot']} {s['state']}" for s in body["slots"])
    typer.echo(f"{body['stage']}: {body['desired']} replicas ({body['ready']} ready, "
               f"{body['draining']} draining); slots: {slots}")


def _secret(path: Optional[str]) -> bytes:
    if path is not None:
        try:
            return open(path, "rb").read().strip()
        except OSError as exc:
            _fail(f"cannot read --secret-file: {exc}", 2)
    return os.environ.get("ALTOFLOW_SECRET", "").encode()


@app.command()
def worker(
    target: str = typer.Option(..., "--target", help="The same target the router serves."),
    stage: str = typer.Option(..., "--stage", help="The stage this replica runs."),
    slot: int = typer.Option(0, "--slot", help="Which of the stage's replicas (0-based)."),
    connect: str = typer.Option(..., "--connect", help="The router: HOST:PORT, or a UNIX socket path."),
    secret_file: Optional[str] = typer.Option(None, "--secret-file",
                                              help="Shared secret for TCP (or ALTOFLOW_SECRET)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                      help="As the router's `serve --allow-pickle` (local sockets only)."),
    barrier: bool = typer.Option(False, "--barrier", help="As the router's `serve --barrier`."),
    tls_ca: Optional[str] = typer.Option(None, "--tls-ca",
                                         help="TLS to the router, whose certificate this CA file signed."),
    heartbeat: float = typer.Option(1.0, "--heartbeat", min=0.01,
                                    help="Seconds between heartbeats; the router marks a replica "
                                         "silent for 5 of them as down."),
    log_level: LogLevel = _log_level(LogLevel.info),
    log_format: LogFormat = _log_format(),
    otel: bool = _otel(),
) -> None:
    """Run one replica of a stage, connected to a router (`serve` starts local ones for you).

    altoflow worker --target app.py --stage verify --slot 1 --connect router-host:7000 --secret-file secret

    The router: altoflow serve app.py --listen 0.0.0.0:7000 --secret-file secret --remote verify
    """
    from altoflow import _logging
    from altoflow.runtime.worker import WorkerError, run_worker

    _logging.configure(log_level.value, log_format.value, replica=f"{stage}#{slot}")
    _enable_tracing(otel)
    secret = _secret(secret_file)
    _cwd_on_path()
    try:
        run_worker(target, stage, slot, connect=connect, secret=secret, allow_pickle=allow_pickle,
                   barrier=barrier, tls_ca=tls_ca, heartbeat=heartbeat)
    except CompileError as exc:
        _fail(str(exc), 2)
    except WorkerError as exc:  # WorkerStartError included: it did not get in, or lost its router
        _fail(str(exc), 1)


def _register_sim_lm() -> None:
    from altoflow.lm.sim_server import sim_lm_command

    app.command("sim-lm", help="Serve the SIMULATED LM over an OpenAI-compatible HTTP API.")(
        sim_lm_command)


_register_sim_lm()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
