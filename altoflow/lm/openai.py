"""Any OpenAI-compatible HTTP server: vLLM's, SGLang's, llama.cpp's, hosted APIs, sim-lm.

A completion prompt (``str``) goes to ``POST {base_url}/completions``, a chat prompt to
``POST {base_url}/chat/completions``, always with ``stream: true``: text arrives as server-sent
events and is passed on delta by delta. One :class:`httpx.AsyncClient` per engine pools the
connections. Aborting a generation closes its HTTP response, which closes the connection; the
servers named above stop generating for a request whose client has gone.

While tracing is on (``altoflow serve --otel``; ``altoflow._tracing``), each generation is a
``chat <model>`` or ``text_completion <model>`` span, a child of the span of the stage that
asks for it, and its HTTP request carries that span's ``traceparent``, so the server's own
spans join the trace.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Any

import httpx

from altoflow import _tracing

from ._base import (
    LM,
    ChatMessage,
    LMConnectionError,
    LMProtocolError,
    LMResponseError,
    LMTimeoutError,
    Sampling,
)

__all__ = ["DEFAULT_TIMEOUT", "OpenAILM", "SSEDecoder", "SSEEvent"]

#: Connect quickly or fail; allow two minutes between bytes, which covers the time to first
#: token of a busy server (the read timeout applies to each chunk, not to the whole response).
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=30.0, pool=120.0)


class SSEEvent:
    """One server-sent event (only the fields the OpenAI protocol uses)."""

    __slots__ = ("event", "data")

    def __init__(self, event: str, data: str) -> None:
        self.event = event
        self.data = data

    def __repr__(self) -> str:
        return f"SSEEvent(event={self.event!r}, data={self.data!r})"


class SSEDecoder:
    """Sans-io decoder of ``text/event-stream`` lines (the WHATWG rules, minus ``retry``/``id``).

    Feed it lines without their line ending; it returns an event when a blank line ends one.
    """

    __slots__ = ("_event", "_data")

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed_line(self, line: str) -> SSEEvent | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = SSEEvent(self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None  # a comment, e.g. a keep-alive ping
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def close(self) -> SSEEvent | None:
        """End of the stream: an event without its closing blank line is still delivered."""
        return self.feed_line("")


class OpenAILM(LM):
    """An OpenAI-compatible server.

    ``base_url`` is the API root, as the OpenAI SDK takes it, e.g. ``http://127.0.0.1:8000/v1``.
    ``model`` is the served model's name; when omitted, the server's only model (from
    ``GET {base_url}/models``) is used. ``extra_body`` is merged into every request (for
    server-specific parameters such as vLLM's ``repetition_penalty``). ``transport`` replaces
    the network, for tests.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_connections: int = 256,
        headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        sampling: Sampling | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(sampling=sampling)
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(
                "base_url must be an http(s) URL such as 'http://127.0.0.1:8000/v1', "
                f"got {base_url!r}"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = model or self.base_url
        self.extra_body = dict(extra_body or {})
        all_headers = {"Accept": "text/event-stream, application/json"}
        if api_key:
            all_headers["Authorization"] = f"Bearer {api_key}"
        all_headers.update(headers or {})
        self._client = httpx.AsyncClient(
            headers=all_headers,
            timeout=timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def models(self) -> list[str]:
        """The ids of the models the server serves (``GET {base_url}/models``)."""
        url = f"{self.base_url}/models"
        try:
            response = await self._client.get(url)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, url) from exc
        if response.status_code >= 400:
            raise self._status_error(
                response.status_code, response.reason_phrase, response.text, url
            )
        try:
            return [entry["id"] for entry in response.json()["data"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise LMProtocolError(
                f"GET {url} did not answer with an OpenAI model list: {response.text[:200]!r}"
            ) from exc

    async def _model_name(self) -> str:
        if self.model is None:
            served = await self.models()
            if len(served) != 1:
                listed = ", ".join(map(repr, served)) or "none"
                raise LMResponseError(
                    f"{self.base_url} serves {len(served)} models ({listed}); pass "
                    "OpenAILM(..., model=NAME) to choose one",
                    url=f"{self.base_url}/models",
                )
            self.model = self.name = served[0]
        return self.model

    def _generate(
        self, prompt: str | tuple[ChatMessage, ...], sampling: Sampling
    ) -> AsyncGenerator[str, None]:
        if _tracing.TRACER is None:
            return self._stream(prompt, sampling, None)
        return self._traced(prompt, sampling)

    def _url(self, chat: bool) -> str:
        return f"{self.base_url}/chat/completions" if chat else f"{self.base_url}/completions"

    async def _traced(
        self, prompt: str | tuple[ChatMessage, ...], sampling: Sampling
    ) -> AsyncGenerator[str, None]:
        """``_stream`` in a span of its own, whose context the HTTP request carries."""
        chat = not isinstance(prompt, str)
        span, headers = _tracing.start_lm_call("chat" if chat else "text_completion",
                                               await self._model_name(), self._url(chat))
        failure: BaseException | None = None
        n = 0
        try:
            async with aclosing(self._stream(prompt, sampling, headers)) as deltas:
                async for delta in deltas:
                    n += 1
                    yield delta
        except Exception as exc:
            failure = exc
            raise
        finally:
            _tracing.end_lm_call(span, failure, n)

    async def _stream(
        self, prompt: str | tuple[ChatMessage, ...], sampling: Sampling,
        headers: dict[str, str] | None,
    ) -> AsyncGenerator[str, None]:
        chat = not isinstance(prompt, str)
        url = self._url(chat)
        body: dict[str, Any] = {"model": await self._model_name(), "stream": True}
        if chat:
            body["messages"] = [m.as_dict() for m in prompt]  # type: ignore[union-attr]
        else:
            body["prompt"] = prompt
        body.update(sampling.as_openai())
        body.update(self.extra_body)
        try:
            async with self._client.stream("POST", url, json=body, headers=headers) as response:
                if response.status_code >= 400:
                    text = (await response.aread()).decode("utf-8", "replace")
                    raise self._status_error(
                        response.status_code, response.reason_phrase, text, url
                    )
                content_type = response.headers.get("content-type", "")
                if "text/event-stream" not in content_type:
                    # A server that ignores "stream": true answers with one JSON body.
                    data = _parse_json((await response.aread()).decode("utf-8", "replace"), url)
                    _raise_if_error(data, url)
                    yield _text_of(data, chat, url, streamed=False)
                    return
                async with aclosing(_deltas(response, chat, url)) as deltas:
                    async for delta in deltas:
                        yield delta
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, url) from exc

    def _status_error(self, status: int, reason: str, text: str, url: str) -> LMResponseError:
        detail = _error_message(text)
        message = f"{url} answered {status} {reason}: {detail}"
        if status == 404:
            if not self.base_url.endswith("/v1"):
                message += (
                    f". OpenAI-compatible APIs are usually under /v1: try "
                    f"base_url={self.base_url + '/v1'!r}"
                )
            else:
                message += (
                    f". Check the model name ({self.model!r}): GET {self.base_url}/models lists "
                    "the served ones"
                )
        elif status in (401, 403):
            message += ". The server wants credentials: pass OpenAILM(..., api_key=...)"
        elif status in (429, 503):
            message += ". The server is overloaded or rate-limiting: retry later or lower the load"
        elif status == 400 or status == 422:
            message += ". The server rejected the request's parameters"
        return LMResponseError(message, status=status, url=url, detail=detail)

    def _transport_error(self, exc: httpx.HTTPError, url: str) -> Exception:
        if isinstance(exc, httpx.TimeoutException):
            kind = {
                httpx.ConnectTimeout: "connecting",
                httpx.ReadTimeout: "waiting for the next bytes of the response",
                httpx.WriteTimeout: "sending the request",
                httpx.PoolTimeout: "waiting for a free connection from the pool",
            }.get(type(exc), "waiting")
            return LMTimeoutError(
                f"timed out {kind} from {url} ({exc!r}); raise the limit with "
                "OpenAILM(..., timeout=httpx.Timeout(...)) if the server is just slow"
            )
        if isinstance(exc, httpx.ConnectError):
            return LMConnectionError(
                f"could not connect to {url}: {exc}. Is the server running at {self.base_url}? "
                "(for a local simulated one: altoflow sim-lm --port PORT)"
            )
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
            return LMConnectionError(f"the connection to {url} broke mid-response: {exc!r}")
        return LMConnectionError(f"request to {url} failed: {exc!r}")


async def _deltas(response: httpx.Response, chat: bool, url: str) -> AsyncGenerator[str, None]:
    decoder = SSEDecoder()
    finished = False
    lines = response.aiter_lines()
    while True:
        line = await anext(lines, None)
        event = decoder.close() if line is None else decoder.feed_line(line)
        if event is not None:
            if event.data == "[DONE]":
                return
            data = _parse_json(event.data, url)
            _raise_if_error(data, url)
            choices = data.get("choices") or []
            if choices:
                # A chunk without choices carries only usage statistics.
                delta = _text_of(data, chat, url, streamed=True)
                if delta:
                    yield delta
                finished = finished or choices[0].get("finish_reason") is not None
        if line is None:
            break
    if not finished:
        raise LMConnectionError(
            f"the event stream from {url} ended before the generation finished "
            "(no finish_reason and no [DONE]); the server failed or stopped: see its log"
        )


def _parse_json(text: str, url: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise LMProtocolError(f"{url} sent data that is not JSON: {text[:200]!r}") from exc
    if not isinstance(data, dict):
        raise LMProtocolError(f"{url} sent JSON that is not an object: {text[:200]!r}")
    return data


def _raise_if_error(data: dict[str, Any], url: str) -> None:
    # vLLM, SGLang and llama.cpp put an error object in the stream when a generation fails after
    # the response has started (the HTTP status is 200 by then).
    error = data.get("error")
    if error is None and data.get("object") == "error":
        error = data
    if error is not None:
        detail = error.get("message", error) if isinstance(error, dict) else error
        status = error.get("code") if isinstance(error, dict) else None
        raise LMResponseError(
            f"{url} reported an error during the generation: {detail}",
            status=status if isinstance(status, int) else None,
            url=url,
            detail=str(detail),
        )


def _text_of(data: dict[str, Any], chat: bool, url: str, *, streamed: bool) -> str:
    try:
        choice = data["choices"][0]
        if not chat:
            text = choice["text"]
        elif streamed:
            text = choice.get("delta", {}).get("content")
        else:
            text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        if not chat:
            expected = "choices[0].text"
        else:
            expected = "choices[0].delta.content" if streamed else "choices[0].message.content"
        raise LMProtocolError(
            f"{url} sent a response without the expected {expected}: {json.dumps(data)[:300]}"
        ) from exc
    if text is None:
        return ""
    if not isinstance(text, str):
        raise LMProtocolError(f"{url} sent text that is not a string: {text!r}")
    return text


def _error_message(text: str) -> str:
    """The human part of an error body: OpenAI's ``{"error": {"message": ...}}`` and variants."""
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:500] or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            for key in ("message", "detail", "msg"):
                if key in error:
                    return str(error[key])[:500]
        elif isinstance(error, str):
            return error[:500]
    return text.strip()[:500]
