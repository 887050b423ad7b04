"""altoflow's HTTP API, as an ASGI app on Starlette: ``create_app(ingress)``.

- ``POST /v1/run``: the body is the request fields as a JSON object, sent as
  ``Content-Type: application/json`` (415 otherwise). The answer streams NDJSON, one event per
  line, each line sent the moment its event exists; it ends with a ``done`` or an ``error``
  line. 413 for a body over ``max_body`` bytes; 422 for a body that is not a JSON object, nests
  deeper than request values may, or does not fit the request schema (the first
  ``MAX_ERRORS`` errors, and their count); 503 with ``Retry-After`` when the ingress is full. A
  client that disconnects cancels its request. With ``Accept: text/event-stream`` the same
  events come as server-sent events instead (``altoflow.server.sse``).
- ``GET /v1/graph``: ``altoflow compile --format json``'s document, plus ``outputs`` (the output
  stages) and ``request_schema`` (the request's JSON schema).
- ``GET /healthz``: the ingress's health; 200 when its status is ``ok``, else 503.
- ``GET /metrics``: Prometheus text exposition (the ingress's one registry).
- ``GET /v1/requests/{id}/timeline``: the timeline of a recent request, by the id below
  (``altoflow.runtime.timeline``: when each invocation started and ended and each output
  appeared); 404 with the reason for an id whose timeline is not kept.
- ``GET /``: the live page, and ``GET /static/{name}`` its files (``altoflow.server.page``).
- ``GET /v1/stages``: each stage's replicas (``Ingress.stages``): desired, ready, draining, and
  each slot's state.
- ``PUT /v1/stages/{stage}/replicas`` with ``{"replicas": N}``: rescale a running server
  (``Ingress.rescale``), answering the stage's entry of ``GET /v1/stages``. Only with an
  ``admin_token`` (``altoflow serve --admin-token-file``), sent as ``Authorization: Bearer
  TOKEN``: 403 when the app has none, 401 for a missing or wrong token, 404 for an unknown stage
  (naming the stages), 422 for a body without a whole ``replicas`` >= 1, 409 when the runtime
  cannot rescale (the in-process one; a server starting or stopping).

Every request has an id: the client's ``X-Request-Id`` when it is 1 to 128 printable ASCII
characters without spaces, else a new one (32 hex digits). Every answer carries it back in
``X-Request-Id``, the ``done`` or ``error`` line of ``POST /v1/run`` has it as ``request_id``,
and every log record about the request has it (``altoflow._logging``). While tracing is on
(``altoflow._tracing``), the request's W3C ``traceparent`` (and ``tracestate``) header is the
parent of the request's span, whose ``altoflow.request_id`` attribute is that id.

Every route answers 400 to a ``Host`` header that names neither the address the connection
came in on, nor (on a loopback address) ``localhost``, nor one of ``allowed_hosts``: a web page
whose own name was made to point at this server (DNS rebinding) cannot reach it. The JSON
content type keeps a page from starting runs with a cross-site form post, which browsers send
without asking.

Output values are made JSON here (``altoflow._result.encode_event``); a value that cannot be ends
the request with an ``error`` event that says where in the value the trouble is. A stage's
``error`` event carries its ``traceback`` (from the user's frame on) unless the app was made
with ``tracebacks=False``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from altoflow import _tracing
from altoflow._errors import InputError, Overloaded
from altoflow._logging import REQUEST_ID, new_request_id, valid_request_id
from altoflow._result import Event, encode_event
from altoflow.compiler._request import MAX_DEPTH
from altoflow.runtime.metrics import CONTENT_TYPE as PROMETHEUS
from altoflow.runtime.stream import RequestStream
from altoflow.server.ingress import Ingress, RescaleRefused
from altoflow.server.page import page_routes
from altoflow.server.sse import NDJSON, SSE, sse_frame, wants_sse

MAX_BODY = 1024 * 1024
"""The default limit of a ``POST /v1/run`` body, in bytes (``altoflow serve --max-body``)."""
#: Bytes of a body over the limit read (and thrown away) before its 413, so that a client that
#: sends all of its body before it reads the answer gets the 413 rather than a reset.
DISCARD_MAX = 64 * 1024 * 1024


def create_app(ingress: Ingress, *, max_body: int = MAX_BODY,
               allowed_hosts: Iterable[str] = (), tracebacks: bool = True,
               admin_token: str | None = None) -> Starlette:
    """The ASGI app serving ``ingress``; its lifespan enters and leaves the ingress.

    ``max_body``: the largest ``POST /v1/run`` body taken, in bytes (413 past it).
    ``allowed_hosts``: names the ``Host`` header may have besides the address the connection
    came in on (and ``localhost`` on a loopback address), e.g. the server's DNS name or a
    proxy's; ``"*"`` takes any. ``tracebacks=False`` keeps stages' tracebacks out of the
    ``error`` events (they are still logged). ``admin_token`` turns on the routes that change
    the server (``PUT /v1/stages/{stage}/replicas``), for requests that send it as a Bearer
    token; without it they answer 403.
    """
    if max_body < 1:
        raise ValueError(f"max_body must be at least 1 byte, not {max_body}")
    if admin_token is not None and not admin_token.strip():
        raise ValueError("admin_token is empty: give a secret of its own (e.g. 32 random bytes, "
                         "hex), or None to keep the admin routes off")
    token = admin_token.strip().encode() if admin_token is not None else None
    hosts = frozenset(_host_name(h) for h in allowed_hosts)
    plan = ingress.compiled.plan
    graph = {
        **plan.contract_json(),
        "outputs": [s.name for s in plan.outputs],
        "request_schema": plan.request_schema,
    }
    field_names = sorted({f for s in plan.stages for f in s.fields})
    example = "{" + ", ".join(f'"{f}": ...' for f in field_names) + "}"

    async def run(request: Request) -> Response | EventStreamResponse:
        wanted = request.query_params.get("partials", "true").strip().lower()
        if wanted not in _FLAGS:
            return _unprocessable(f"the query parameter partials={wanted!r} is neither true nor "
                                  f"false; send /v1/run?partials=false to leave the stages' "
                                  f"partial events out of the answer (the default is true)")
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != "application/json" and not (media.startswith("application/") and
                                                media.endswith("+json")):
            return JSONResponse(
                {"detail": f"POST /v1/run takes a JSON body, sent with Content-Type: "
                           f"application/json, not {media or 'no content type'} (curl: add "
                           f"-H 'Content-Type: application/json')", "errors": []},
                status_code=415)
        try:
            body = await _read_body(request, max_body)
        except _TooLarge as exc:
            # The connection is closed after this answer. Most clients (httpx, requests) send
            # all of the body before they read the answer, and a close with the body unread
            # resets the connection, losing the 413 with it: the rest is read and thrown away,
            # up to DISCARD_MAX bytes (nothing of it is kept).
            if exc.more:
                await _discard(request, DISCARD_MAX)
            return JSONResponse(
                {"detail": f"the body is larger than this server takes ({max_body} bytes; "
                           f"altoflow serve --max-body raises the limit)", "errors": []},
                status_code=413, headers={"Connection": "close"})
        try:
            fields = json.loads(body) if body.strip() else {}
        except RecursionError:
            return _unprocessable(f"the body nests arrays and objects too deep to read; a "
                                  f"request value may nest at most {MAX_DEPTH} levels")
        except json.JSONDecodeError as exc:
            return _unprocessable(f"the body is not valid JSON ({exc}); send the request fields "
                                  f"as a JSON object, like {example}")
        except UnicodeDecodeError as exc:
            return _unprocessable(f"the body is not UTF-8 ({exc}); send the request fields "
                                  f"as a JSON object, like {example}")
        except ValueError:  # json.loads's only other complaint: an int too long to convert
            return _unprocessable(f"the body has an int of more than "
                                  f"{sys.get_int_max_str_digits()} digits, more than a JSON "
                                  f"number may have here; send it as a string, or split it")
        if not isinstance(fields, dict):
            return _unprocessable(f"the body is a JSON {_json_kind(fields)}; send the request "
                                  f"fields as a JSON object, like {example}")
        request_id = request.scope["altoflow.request_id"]
        try:
            stream = ingress.submit(fields, request_id=request_id, partials=_FLAGS[wanted])
        except InputError as exc:
            return _unprocessable(str(exc), _validation_errors(exc))
        except Overloaded as exc:
            retry_after = exc.retry_after
            return JSONResponse({"detail": str(exc)}, status_code=503,
                                headers={"Retry-After": str(retry_after)})
        return EventStreamResponse(stream, request_id, tracebacks=tracebacks,
                                   sse=wants_sse(request.headers.get("accept", "")))

    async def get_graph(request: Request) -> Response:
        return JSONResponse(graph)

    async def healthz(request: Request) -> Response:
        health = ingress.health()
        return JSONResponse(health, status_code=200 if health.get("status") == "ok" else 503)

    async def metrics(request: Request) -> Response:
        return Response(ingress.metrics(), media_type=PROMETHEUS)

    async def timeline(request: Request) -> Response:
        request_id = request.path_params["request_id"]
        find = getattr(ingress, "timeline", None)
        doc = None if find is None else find(request_id)
        if doc is None:
            missing = getattr(ingress, "timeline_missing", None)
            detail = (missing(request_id) if missing is not None else
                      f"no timeline for request {request_id!r}: this runtime records none")
            return JSONResponse({"detail": detail}, status_code=404)
        return JSONResponse(doc)

    async def get_stages(request: Request) -> Response:
        stages = getattr(ingress, "stages", None)  # an Ingress of before rescaling has none
        if stages is None:
            return JSONResponse({"detail": "this runtime does not report its stages' replicas"},
                                status_code=404)
        return JSONResponse({"stages": stages()})

    async def put_replicas(request: Request) -> Response:
        if token is None:
            return JSONResponse(
                {"detail": "this server takes no admin requests: start it with "
                           "`altoflow serve --admin-token-file PATH` to rescale it, and send the "
                           "file's token as `Authorization: Bearer TOKEN`"}, status_code=403)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
            return JSONResponse(
                {"detail": "missing or wrong admin token: send the token of the server's "
                           "--admin-token-file as `Authorization: Bearer TOKEN`"},
                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        name = request.path_params["stage"]
        if name not in plan.names:
            return JSONResponse({"detail": f"no stage named {name!r}; stages: "
                                           f"{', '.join(plan.names)}"}, status_code=404)
        try:
            body = json.loads(await _read_body(request, 4096) or b"null")
        except (_TooLarge, ValueError, RecursionError):
            body = None
        replicas = body.get("replicas") if isinstance(body, dict) else None
        if type(replicas) is not int or replicas < 1:
            return _unprocessable(
                f"the body must be a JSON object with a whole number `replicas` >= 1, like "
                f'{{"replicas": 3}}, not {_preview(body)}',
                ([{"loc": ["body", "replicas"], "msg": "a whole number >= 1",
                   "type": "int_greater_than_equal"}], 1))
        rescale = getattr(ingress, "rescale", None)
        try:
            if rescale is None:
                raise RescaleRefused("this runtime cannot rescale its stages; serve the pipeline "
                                     "with `altoflow serve` to rescale it")
            state = await rescale(name, replicas)
        except ValueError as exc:
            return _unprocessable(str(exc), ([{"loc": ["body", "replicas"], "msg": str(exc),
                                               "type": "value_error"}], 1))
        except RescaleRefused as exc:
            return JSONResponse({"detail": str(exc)}, status_code=409)
        return JSONResponse(state)

    @asynccontextmanager
    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        async with ingress:
            yield

    return Starlette(
        routes=[
            Route("/v1/run", run, methods=["POST"]),
            Route("/v1/graph", get_graph, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/v1/requests/{request_id:path}/timeline", timeline, methods=["GET"]),
            Route("/v1/stages", get_stages, methods=["GET"]),
            Route("/v1/stages/{stage}/replicas", put_replicas, methods=["PUT"]),
            *page_routes(),
        ],
        middleware=[Middleware(RequestId), Middleware(HostCheck, allowed=hosts)],
        lifespan=lifespan,
    )


class RequestId:
    """ASGI middleware: gives every HTTP request its id (see the module's docstring), as
    ``scope["altoflow.request_id"]`` and ``REQUEST_ID`` for the request's task, and sends it
    back in the ``X-Request-Id`` header of the answer. While tracing is on it also makes the
    request's incoming trace context (``traceparent``) the current one for the request's task."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if valid_request_id(given) else new_request_id()
        scope["altoflow.request_id"] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        token = REQUEST_ID.set(request_id)
        traced = None
        if _tracing.TRACER is not None:
            traced = _tracing.attach(_tracing.extract(scope["headers"]))
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if traced is not None:
                _tracing.detach(traced)
            REQUEST_ID.reset(token)


class HostCheck:
    """ASGI middleware: 400 for an HTTP request whose ``Host`` the server does not answer to
    (see the module's docstring)."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.allowed:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not _host_ok(_host_name(host), scope.get("server"), self.allowed):
                response = JSONResponse(
                    {"detail": f"this server does not answer to Host: {host or '(none)'}; "
                               f"start it with --allowed-host {_host_name(host) or 'NAME'} if "
                               f"that is its name", "errors": []}, status_code=400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "127.0.0.1", "::1"})


_FLAGS = {"true": True, "1": True, "yes": True, "on": True,
          "false": False, "0": False, "no": False, "off": False}


def _host_name(host: str) -> str:
    """The name of a ``Host`` header (or an --allowed-host value): no port, no IPv6 brackets,
    lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def _host_ok(name: str, server: tuple[str, int] | None, allowed: frozenset[str]) -> bool:
    if name in allowed:
        return True
    if server is None:  # not a socket (e.g. an in-memory transport): nothing to check against
        return True
    bound = _host_name(str(server[0]))
    if name == bound:
        return True
    try:
        loopback = ipaddress.ip_address(bound).is_loopback
    except ValueError:
        return False
    return loopback and (name in _LOOPBACK_NAMES or name.endswith(".localhost"))


class _TooLarge(Exception):
    def __init__(self, more: bool) -> None:
        super().__init__()
        self.more = more  # the client has more of the body to send


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, read no further than ``limit`` bytes (``_TooLarge`` past it), whether its size
    is announced (``Content-Length``) or not (chunked)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _TooLarge(more=True)
    body = bytearray()
    while True:
        message = await request.receive()
        if message["type"] != "http.request":
            raise ClientDisconnect
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            raise _TooLarge(more)
        if not more:
            return bytes(body)


async def _discard(request: Request, most: int) -> None:
    """Read the rest of a body that is over the limit, keeping none of it, unless it is (or
    turns out to be) more than ``most`` bytes."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > most:
        return
    seen = 0
    while seen <= most:
        message = await request.receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return  # the client went away, or sent it all
        seen += len(message.get("body", b""))


def _preview(value: Any) -> str:
    """A short JSON rendering of a (wrong) request body, for an error message."""
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _unprocessable(detail: str, errors: tuple[list[dict[str, Any]], int] = ([], 0)) -> JSONResponse:
    """422: ``detail``, the first ``MAX_ERRORS`` errors and how many there were."""
    shown, total = errors
    return JSONResponse({"detail": detail, "errors": shown, "errors_total": total},
                        status_code=422)


def _validation_errors(exc: InputError) -> tuple[list[dict[str, Any]], int]:
    shown = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors]
    return shown, exc.errors_total


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


class EventStreamResponse:
    """Streams a ``RequestStream`` as NDJSON (or, with ``sse``, as server-sent events), and
    cancels the request when the client goes away.

    Each write takes the event that was waited for and the events already buffered behind it,
    up to ``COALESCE_BYTES``: one ASGI send (an HTTP chunk) for what is there, rather than one
    per event, and never a wait for more; the last line goes with the end of the response. The
    bytes on the wire are the same.

    It listens for ``http.disconnect`` itself rather than trusting ``send`` to fail: with ASGI
    2.3 servers (uvicorn) a send to a closed connection is silently dropped, and a request whose
    stage is waiting would never write again to find out.
    """

    COALESCE_BYTES = 64 * 1024

    def __init__(self, stream: RequestStream, request_id: str | None = None, *,
                 tracebacks: bool = True, sse: bool = False) -> None:
        self.stream = stream
        self.request_id = request_id
        self.tracebacks = tracebacks
        self.sse = sse  # the same events as server-sent events (altoflow.server.sse)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Two asyncio tasks, not an anyio task group: this runs once per request, and the task
        # group's start, its cancel scopes and the repr of the task that its cancel builds cost
        # about half of a small request's server CPU (the ASGI servers altoflow runs on are asyncio).
        writer = asyncio.current_task()
        assert writer is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            with contextlib.suppress(Exception):  # a receive that fails: as good as gone
                while (await receive())["type"] != "http.disconnect":
                    pass
            gone = True
            self.stream.close()  # cancels the request at the ingress
            writer.cancel()

        watcher = asyncio.get_running_loop().create_task(watch(), name="altoflow-watch")
        try:
            await self._write(send)
        except OSError:
            pass  # ASGI 2.4: the client disconnected while we sent; the close below cancels
        except asyncio.CancelledError:
            if not gone:
                raise  # not the watcher's: the server cancels the request's task
            if sys.version_info >= (3, 11):
                writer.uncancel()
        finally:
            watcher.cancel()
            self.stream.close()  # a no-op once the request has ended

    def _line(self, event: Event) -> tuple[bytes, bool]:
        """The event's bytes on the wire, and whether it ends the stream."""
        line, ended = encode_event(event, request_id=self.request_id, tracebacks=self.tracebacks)
        if self.sse:  # an output that had no JSON form became an error line, and ended
            line = sse_frame("error" if ended and event.type != "done" else event.type, line)
        return line, ended

    async def _write(self, send: Send) -> None:
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", (SSE if self.sse else NDJSON).encode()),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),  # tell proxies (nginx) not to buffer the stream
            ],
        })
        async for event in self.stream:
            body, ended = self._line(event)
            if not ended:
                lines, size = [body], len(body)
                while size < self.COALESCE_BYTES and (event := self.stream.ready()) is not None:
                    line, ended = self._line(event)
                    lines.append(line)
                    size += len(line)
                    if ended:
                        break
                if len(lines) > 1:
                    body = b"".join(lines)
            if ended:  # the last line and the end of the response: one write
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
            await send({"type": "http.response.body", "body": body, "more_body": True})
        # The ingress stopped (server shutting down) before the request ended.
        line, _ = encode_event(Event(
            "error", None, {}, error="the request was cancelled before it ended (the server "
            "is shutting down)", exc_type="Cancelled"), request_id=self.request_id)
        if self.sse:
            line = sse_frame("error", line)
        await send({"type": "http.response.body", "body": line, "more_body": False})


@contextmanager
def serve_in_thread(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    startup_timeout: float = 30.0,
) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a thread of this process; yields its base URL.

    For tests, notebooks and docs (``port=0`` picks a free port). Leaving the block stops the
    server, cancelling requests that are still streaming after a few seconds.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="altoflow-http", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the HTTP server did not start; see its log above")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start within {startup_timeout} s")
            time.sleep(0.01)
        bound = sock.getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        yield f"http://{shown}:{bound[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
