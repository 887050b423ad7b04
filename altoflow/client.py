"""``Client``: run requests on an altoflow server, as ``altoflow.run`` runs them in-process.

``Client(url).run(**fields)`` returns the same ``Result`` and raises the same ``StageError`` as
``altoflow.run``; ``stream`` yields each event the moment its NDJSON line arrives, ``partial``
events included (``run`` leaves them out of its ``Result``, as ``altoflow.run`` does). ``arun``
and ``astream`` are the async twins. The server's ``/v1/graph`` is fetched once, for the output
stages' levels that ``Result[stage]`` needs.

A ``503`` (every request slot of the server is taken) is retried after its ``Retry-After``, at
most ``busy_retries`` times and ``busy_wait`` seconds in all; then ``ServerBusy`` is raised.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from altoflow._errors import InputError, StageError
from altoflow._result import Event, Result

if TYPE_CHECKING:  # httpx is imported on first use, so that `import altoflow` stays quick
    import httpx


class ServerError(Exception):
    """The server answered, but not as the altoflow HTTP API does (a 500, a broken stream)."""


class ServerUnavailable(ConnectionError):
    """The server cannot be reached, or the connection broke off mid-request."""


class ServerBusy(ServerUnavailable):
    """The server answered 503: every request slot is taken. Retry after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Client:
    """A client of ``altoflow serve``'s HTTP API.

    ``timeout`` is httpx's: the most seconds to wait to connect, and then for each next piece
    of the answer (so a long request that keeps streaming is fine); ``None`` waits forever.
    ``transport`` is an httpx transport, for tests (an async one, such as
    ``httpx.ASGITransport``, serves only ``arun``/``astream``). The sync methods share one
    connection pool (``close()`` it, or use ``with Client(...) as client``); the async ones open
    a pool per call unless used inside ``async with client:``.

    ``base_url`` without a scheme (``"127.0.0.1:8000"``) means ``http://``. A busy server's
    ``503`` is retried after the ``Retry-After`` it gives (1 s if it gives none), at most
    ``busy_retries`` times and ``busy_wait`` seconds of waiting in all; a ``Retry-After`` that
    would go past ``busy_wait`` raises ``ServerBusy`` at once. ``busy_retries=0`` never retries.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | None = 300.0,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
        busy_retries: int = 3,
        busy_wait: float = 30.0,
    ) -> None:
        if busy_retries < 0 or not busy_wait >= 0:
            raise ValueError(f"busy_retries and busy_wait take 0 or more, not {busy_retries} and "
                             f"{busy_wait}")
        if "://" not in base_url:
            base_url = f"http://{base_url}"
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.busy_retries = busy_retries
        self.busy_wait = busy_wait
        self._transport = transport
        self._http: httpx.Client | None = None
        self._ahttp: httpx.AsyncClient | None = None
        self._outputs: dict[str, list[str]] | None = None
        # The answers astream is reading on the pool of `async with client:`, closed at its end.
        self._astreams: weakref.WeakSet[httpx.Response] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # -- sync -------------------------------------------------------------------------------

    def run(self, /, **fields: Any) -> Result:
        """Run one request and return its ``Result``; raises ``StageError``, ``InputError``,
        ``ServerBusy`` or ``ServerUnavailable``."""
        outputs = self._output_levels()
        return Result(list(self._stream(fields, partials=False)), outputs)

    def stream(self, /, **fields: Any) -> Iterator[Event]:
        """Each event as it arrives: the outputs (and the ``partial`` events of stages that
        call ``altoflow.partial``), then ``done``. A served ``error`` event raises
        ``StageError`` after the events before it. Leaving the loop early cancels the request."""
        return self._stream(fields, partials=True)

    def _stream(self, fields: dict[str, Any], *, partials: bool) -> Iterator[Event]:
        # A Result leaves partial events out: run() asks the server not to send them.
        path = "/v1/run" if partials else "/v1/run?partials=false"
        body = _encode_fields(fields)
        parser = _EventParser(self._url("/v1/run"))
        retry = _BusyRetry(self.busy_retries, self.busy_wait)
        with self._errors("/v1/run"):
            while True:
                resp = self._sync_http().send(
                    self._sync_http().build_request("POST", path, content=body,
                                                    headers={"content-type": "application/json"}),
                    stream=True)
                if resp.status_code == 200:
                    break
                try:
                    resp.read()
                finally:
                    resp.close()
                wait = retry.wait(resp)
                if wait is None:
                    self._raise_for_status(resp, "/v1/run", retried=retry.tried)
                time.sleep(wait)  # type: ignore[arg-type]
            try:
                for line in resp.iter_lines():
                    event = parser.feed(line)
                    if event is not None:
                        yield event
                    if parser.ended:
                        return
            finally:
                resp.close()
        parser.eof()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __del__(self) -> None:
        # `Client(url).run(...)` as a one-liner must not leak its connection.
        http = getattr(self, "_http", None)
        if http is not None:
            http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _sync_http(self) -> httpx.Client:
        if self._http is None:
            import httpx

            transport = self._transport
            if transport is not None and not isinstance(transport, httpx.BaseTransport):
                raise TypeError(
                    f"transport={type(transport).__name__} is async-only: call arun/astream, or "
                    f"pass a sync transport (httpx.HTTPTransport, httpx.MockTransport) for run/stream"
                )
            self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout,
                                      transport=transport)
        return self._http

    def _output_levels(self) -> dict[str, list[str]]:
        if self._outputs is None:
            with self._errors("/v1/graph"):
                resp = self._sync_http().get("/v1/graph")
            self._outputs = self._parse_graph(resp)
        return self._outputs

    # -- async ------------------------------------------------------------------------------

    async def arun(self, /, **fields: Any) -> Result:
        """``run`` for async code."""
        async with self._async_http() as http:
            outputs = await self._aoutput_levels(http)
            events = [e async for e in self._astream(http, fields, partials=False)]
        return Result(events, outputs)

    async def astream(self, /, **fields: Any) -> AsyncIterator[Event]:
        """``stream`` for async code: ``async for event in client.astream(**fields)``.

        A stream left early inside ``async with client:`` is closed, which cancels its
        request, when the block ends."""
        async with self._async_http() as http:
            async for event in self._astream(http, fields, partials=True):
                yield event

    async def __aenter__(self) -> Client:
        self._ahttp = self._new_async_http()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # A stream left early is a generator suspended inside httpx's. Left to the event loop,
        # which closes all suspended generators at once when it ends, one would be closed
        # while another is still closing it ("aclose(): asynchronous generator is already
        # running"); closing its answer here, while the loop runs, leaves them nothing to do.
        for resp in list(self._astreams):
            await resp.aclose()
        self._astreams.clear()
        if self._ahttp is not None:
            await self._ahttp.aclose()
            self._ahttp = None

    async def _astream(self, http: httpx.AsyncClient, fields: dict[str, Any], *,
                       partials: bool) -> AsyncIterator[Event]:
        import anyio

        path = "/v1/run" if partials else "/v1/run?partials=false"
        body = _encode_fields(fields)
        parser = _EventParser(self._url("/v1/run"))
        retry = _BusyRetry(self.busy_retries, self.busy_wait)
        with self._errors("/v1/run"):
            while True:
                resp = await http.send(
                    http.build_request("POST", path, content=body,
                                       headers={"content-type": "application/json"}),
                    stream=True)
                if resp.status_code == 200:
                    break
                try:
                    await resp.aread()
                finally:
                    await resp.aclose()
                wait = retry.wait(resp)
                if wait is None:
                    self._raise_for_status(resp, "/v1/run", retried=retry.tried)
                await anyio.sleep(wait)  # type: ignore[arg-type]
            try:
                if http is self._ahttp:
                    self._astreams.add(resp)
                async for line in resp.aiter_lines():
                    event = parser.feed(line)
                    if event is not None:
                        yield event
                    if parser.ended:
                        return
            finally:
                await resp.aclose()
        parser.eof()

    async def _aoutput_levels(self, http: httpx.AsyncClient) -> dict[str, list[str]]:
        if self._outputs is None:
            with self._errors("/v1/graph"):
                resp = await http.get("/v1/graph")
            self._outputs = self._parse_graph(resp)
        return self._outputs

    @asynccontextmanager
    async def _async_http(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._ahttp is not None:
            yield self._ahttp
            return
        # An AsyncClient belongs to the event loop that opened it; without `async with client`
        # there is no telling which loop the next call comes from, so each call has its own.
        async with self._new_async_http() as http:
            yield http

    def _new_async_http(self) -> httpx.AsyncClient:
        import httpx

        transport = self._transport
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise TypeError(
                f"transport={type(transport).__name__} is sync-only: call run/stream, or pass "
                f"an async transport (httpx.AsyncHTTPTransport, httpx.ASGITransport) for arun/astream"
            )
        return httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, transport=transport)

    # -- shared -----------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.base_url + path

    @contextmanager
    def _errors(self, path: str) -> Iterator[None]:
        import httpx

        url = self._url(path)
        try:
            yield
        except httpx.TimeoutException as exc:
            raise TimeoutError(
                f"no answer from the altoflow server at {url} within {self.timeout} s "
                f"({type(exc).__name__}); raise Client(..., timeout=...) for slow stages"
            ) from exc
        except httpx.TransportError as exc:
            raise ServerUnavailable(
                f"cannot talk to the altoflow server at {url}: {type(exc).__name__}: {exc}. Is "
                f"it running (altoflow serve app.py --port ...) and is the URL right?"
            ) from exc

    def _raise_for_status(self, resp: httpx.Response, path: str, retried: int = 0) -> None:
        url = self._url(path)
        detail = _detail(resp)
        if resp.status_code == 422:
            raise InputError(detail)
        if resp.status_code == 503:
            retry_after = _retry_after(resp)
            again = f" (after {retried} retries)" if retried else ""
            raise ServerBusy(f"the altoflow server at {url} is busy (503){again}: {detail}",
                             retry_after)
        raise ServerError(f"the altoflow server at {url} answered {resp.status_code}: {detail}")

    def _parse_graph(self, resp: httpx.Response) -> dict[str, list[str]]:
        if resp.status_code != 200:
            self._raise_for_status(resp, "/v1/graph")
        try:
            graph = resp.json()
            levels = {s["name"]: list(s["levels_out"]) for s in graph["stages"]}
            return {name: levels[name] for name in graph["outputs"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise ServerError(
                f"{self._url('/v1/graph')} did not return an altoflow graph "
                f"({type(exc).__name__}: {exc}); is this URL an altoflow server?"
            ) from exc


def _retry_after(resp: httpx.Response) -> float | None:
    """``Retry-After`` in seconds, when it is a number (an HTTP date is taken as absent)."""
    value = resp.headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 else None


class _BusyRetry:
    """Whether, and after how long, a request answered ``503`` is sent again: at most
    ``retries`` times, ``budget`` seconds of waiting in all."""

    DEFAULT_WAIT = 1.0  # when the 503 says no Retry-After

    def __init__(self, retries: int, budget: float) -> None:
        self.left = retries
        self.budget = budget
        self.tried = 0

    def wait(self, resp: httpx.Response) -> float | None:
        """Seconds to wait before sending again, or ``None``: raise for this answer."""
        if resp.status_code != 503:
            return None
        after = _retry_after(resp)
        wait = self.DEFAULT_WAIT if after is None else after
        if self.left <= 0 or wait > self.budget:
            return None
        self.left -= 1
        self.tried += 1
        self.budget -= wait
        return wait


class _EventParser:
    """NDJSON lines in, events out: the part of the client that knows the event format."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ended = False

    def feed(self, line: str) -> Event | None:
        if not line.strip():
            return None
        try:
            event = Event.from_json(json.loads(line))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ServerError(f"{self.url} sent a line that is not an event ({exc}): "
                              f"{line[:200]!r}") from exc
        if event.type == "output" or event.type == "partial":
            return event
        if event.type == "done":
            self.ended = True
            return event
        if event.type == "error":
            self.ended = True
            if event.stage is None:
                raise ServerError(f"the request at {self.url} failed: {event.error}")
            raise StageError(event.stage, event.ancestry, event.error or "", event.exc_type,
                             traceback=event.traceback, request_id=event.request_id)
        raise ServerError(f"{self.url} sent an event of unknown type {event.type!r}: {line[:200]!r}")

    def eof(self) -> None:
        if not self.ended:
            raise ServerError(f"{self.url} ended the stream before the request ended (no done or "
                              f"error event)")


def _encode_fields(fields: dict[str, Any]) -> bytes:
    def default(value: Any) -> Any:
        if hasattr(value, "model_dump"):
            return value.model_dump(mode="json")
        if hasattr(value, "tolist"):
            return value.tolist()
        if isinstance(value, (set, frozenset)):
            return list(value)
        raise TypeError(f"a request field of type {type(value).__name__} has no JSON form; pass "
                        f"JSON-like values (str, numbers, bool, None, lists, dicts)")

    return json.dumps(fields, default=default, ensure_ascii=False).encode()


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500] or resp.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return body["detail"]
    return json.dumps(body)[:500]
