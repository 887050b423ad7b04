"""The simulated engine as an OpenAI-compatible server: ``altoflow sim-lm --port 8001``.

Serves ``POST /v1/completions`` and ``POST /v1/chat/completions`` (streaming with server-sent
events when ``"stream": true``, one JSON body otherwise) and ``GET /v1/models``, enough for
:class:`altoflow.lm.OpenAILM` and other OpenAI clients. The benchmarks run every system against
one such server in its own process, so that only orchestration differs between them.

It says that it is simulated everywhere: the model is always ``altoflow-simulated`` (whatever
the request asked for), ``system_fingerprint`` is ``altoflow-simulated`` in every response and
chunk, every response has the header ``X-Altoflow-Simulated: true``, and it logs a warning at
start. ``GET /altoflow/stats`` (not an OpenAI endpoint) returns the engine's counters, in all
and per pool.

``--profile`` chooses the deployment simulated (:data:`altoflow.lm.sim.PROFILES`): ``unbounded``
(the default) is one engine for every request; ``paper`` is the ALTO paper's pools of engines
per LM stage. A request picks its pool with its model name, ``"sim/<pool>"``; ``GET /v1/models``
lists the names a profile takes, and a pool it does not have is answered 404.

A client that disconnects mid-stream aborts its generation: Starlette cancels the response's
body iterator, whose ``finally`` aborts the request in the simulated engine.

Run it with ``python -m altoflow.lm.sim_server --port 8001`` or through the ``altoflow`` CLI.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Annotated, Any, Literal

import anyio
import typer
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ._base import ChatMessage, Sampling
from .sim import (
    PROFILES,
    SIMULATED_MODEL_NAME,
    Profile,
    SimPlan,
    SimulatedLM,
    TimingModel,
    UnknownPoolError,
    get_profile,
)

__all__ = ["create_app", "serve", "sim_lm_command"]

log = logging.getLogger("altoflow.lm.sim_server")

SIMULATED_HEADERS = {"X-Altoflow-Simulated": "true"}


# -- request bodies --------------------------------------------------------------------------


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[_Part] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ValueError(
                    f"content parts of type {part.type!r} are not supported; only 'text'"
                )
            parts.append(part.text)
        return "".join(parts)


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _Common(BaseModel):
    # Unknown OpenAI fields (user, logprobs, ...) are accepted and ignored, as vLLM does.
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: _StreamOptions | None = None

    def sampling(self, max_tokens: int | None) -> Sampling:
        return Sampling(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k if self.top_k not in (None, -1, 0) else None,
            stop=self.stop or (),
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
        )


class _CompletionRequest(_Common):
    prompt: str | list[str]
    echo: Literal[False] = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("only one prompt per request is supported")
        return value

    def prompt_value(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class _ChatRequest(_Common):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)


# -- the app ---------------------------------------------------------------------------------


def create_app(lm: SimulatedLM) -> Starlette:
    """The ASGI app serving ``lm`` (a :class:`SimulatedLM`) and every pool of its profile."""
    profile = lm.profile

    async def models(request: Request) -> Response:
        return _json(
            {
                "object": "list",
                "data": [
                    {
                        "id": model,
                        "object": "model",
                        "created": 0,
                        "owned_by": "altoflow",
                        "simulated": True,
                        "profile": profile.name,
                    }
                    for model in profile.models()
                ],
            }
        )

    async def stats(request: Request) -> Response:
        return _json(
            {
                "simulated": True,
                **lm.stats()._asdict(),
                "profile": profile.name,
                "pools": {name: s._asdict() for name, s in lm.pool_stats().items()},
                "replicas": dict(profile.replicas),
            }
        )

    async def health(request: Request) -> Response:
        return _json({"status": "ok", "simulated": True})

    async def completions(request: Request) -> Response:
        parsed = await _parse(request, _CompletionRequest)
        if isinstance(parsed, Response):
            return parsed
        return await _respond(request, lm, parsed, parsed.prompt_value(), parsed.max_tokens)

    async def chat_completions(request: Request) -> Response:
        parsed = await _parse(request, _ChatRequest)
        if isinstance(parsed, Response):
            return parsed
        try:
            messages = tuple(ChatMessage(m.role, m.text()) for m in parsed.messages)
        except ValueError as exc:
            return _error(400, str(exc), param="messages")
        max_tokens = parsed.max_completion_tokens
        if max_tokens is None:
            max_tokens = parsed.max_tokens
        return await _respond(request, lm, parsed, messages, max_tokens)

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/altoflow/stats", stats, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ]
    )


async def _parse(request: Request, model: type[_Common]) -> Any:
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the request body is not JSON")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = f"{where}: {first['msg']}" if where else f"the request body: {first['msg']}"
        return _error(400, message, param=where or None)


async def _respond(
    request: Request,
    lm: SimulatedLM,
    req: _Common,
    prompt: str | tuple[ChatMessage, ...],
    max_tokens: int | None,
) -> Response:
    try:
        pool = lm.profile.pool_for(req.model)
    except UnknownPoolError as exc:
        return _error(404, str(exc), param="model", code="model_not_found")
    try:
        plan = lm._plan(prompt, req.sampling(max_tokens))
    except ValueError as exc:
        return _error(400, str(exc))
    responder = _Responder(lm.for_pool(pool), req, not isinstance(prompt, str))
    if req.stream:
        return StreamingResponse(
            responder.events(plan),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", **SIMULATED_HEADERS},
        )
    body = await _unless_disconnected(request, lambda: responder.whole(plan))
    return _json(body) if body is not None else Response(status_code=499)


async def _unless_disconnected(request: Request, work: Any) -> Any:
    """Await ``work()``, but cancel it (aborting the generation) if the client goes away.

    Starlette does this for streaming responses; a plain handler has to watch by itself.
    """
    result = None
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        result = await work()
        tg.cancel_scope.cancel()
    return result


class _Responder:
    """Builds one response, streaming or not, in the completions or chat format."""

    def __init__(self, lm: SimulatedLM, req: _Common, chat: bool) -> None:
        self.lm = lm
        self.req = req
        self.chat = chat
        self.id = ("chatcmpl-sim-" if chat else "cmpl-sim-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _chunk(self, choice: dict[str, Any] | None, usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": SIMULATED_MODEL_NAME,
            "system_fingerprint": SIMULATED_MODEL_NAME,
            "choices": [choice] if choice is not None else [],
        }
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    def _delta(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        if self.chat:
            return {
                "index": 0,
                "delta": {"content": text} if text else {},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        return {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}

    async def events(self, plan: SimPlan) -> AsyncGenerator[str, None]:
        if self.chat:
            yield self._chunk(
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "finish_reason": None,
                    "logprobs": None,
                }
            )
        tokens = 0
        async for token in self.lm.run_plan(plan):
            tokens += 1
            yield self._chunk(self._delta(token, None))
        yield self._chunk(self._delta("", plan.finish_reason))
        options = self.req.stream_options
        if options is not None and options.include_usage:
            yield self._chunk(None, usage=_usage(plan, tokens))
        yield "data: [DONE]\n\n"

    async def whole(self, plan: SimPlan) -> dict[str, Any]:
        parts = [token async for token in self.lm.run_plan(plan)]
        text = "".join(parts)
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": plan.finish_reason,
                "logprobs": None,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "finish_reason": plan.finish_reason,
                "logprobs": None,
            }
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": SIMULATED_MODEL_NAME,
            "system_fingerprint": SIMULATED_MODEL_NAME,
            "choices": [choice],
            "usage": _usage(plan, len(parts)),
        }


def _usage(plan: SimPlan, completion_tokens: int) -> dict[str, int]:
    prompt_tokens = len(plan.prompt_tokens)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _json(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=SIMULATED_HEADERS)


def _error(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> JSONResponse:
    return _json(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": code if code is not None else status,
            }
        },
        status=status,
    )


# -- running it --------------------------------------------------------------------------------


def serve(
    host: str = "127.0.0.1",
    port: int = 8001,
    model: TimingModel | None = None,
    seed: int = 0,
    *,
    profile: Profile | str = "unbounded",
    log_level: str = "info",
) -> None:
    """Serve a :class:`SimulatedLM` with ``model``'s timing and ``profile``'s pools until
    interrupted (blocks)."""
    timing = model if model is not None else TimingModel()
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    lm = SimulatedLM(timing, seed=seed, profile=profile)
    log.warning(
        "altoflow sim-lm: serving a SIMULATED language model (no real model) as %s at "
        "http://%s:%d/v1 (profile %r: %s)",
        ", ".join(map(repr, lm.profile.models())),
        host,
        port,
        lm.profile.name,
        lm.profile.about,
    )
    config = uvicorn.Config(
        create_app(lm), host=host, port=port, log_level=log_level, access_log=False, lifespan="off"
    )
    uvicorn.Server(config).run()


_DEFAULT = TimingModel()


def sim_lm_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    seed: Annotated[
        int, typer.Option(help="Seed of the simulated text (outputs are deterministic given it).")
    ] = 0,
    profile: Annotated[
        str,
        typer.Option(
            help="Deployment simulated: "
            + "; ".join(f"{p.name} ({p.about})" for p in PROFILES.values())
            + ". A request picks its pool by model name: 'sim/<pool>'."
        ),
    ] = "unbounded",
    ttft: Annotated[
        float, typer.Option(help="Fixed part of the time to first token, seconds.")
    ] = _DEFAULT.ttft_s,
    prefill_per_token: Annotated[
        float, typer.Option(help="Prefill time per uncached prompt token, seconds.")
    ] = _DEFAULT.prefill_s_per_token,
    time_per_token: Annotated[
        float, typer.Option(help="Decode step time with one running request, seconds.")
    ] = _DEFAULT.time_per_token_s,
    batch_slowdown: Annotated[
        float, typer.Option(help="Relative slowdown of a decode step per extra running request.")
    ] = _DEFAULT.batch_slowdown,
    max_batch: Annotated[
        int,
        typer.Option(
            help="Requests running at once per engine; more wait in that engine's queue "
            "(a profile's pool may set its own)."
        ),
    ] = _DEFAULT.max_batch,
    prefix_cache_blocks: Annotated[
        int, typer.Option(help="Prefix cache size in blocks of 16 prompt tokens; 0 turns it off.")
    ] = _DEFAULT.prefix_cache_blocks,
    time_scale: Annotated[
        float, typer.Option(help="Multiply every duration by this (0.1 runs 10x faster).")
    ] = 1.0,
    log_level: Annotated[
        str, typer.Option(help="Log level: debug, info, warning, error.")
    ] = "info",
) -> None:
    """Serve a SIMULATED LM (no real model) with an OpenAI-compatible API, for benchmarks and demos.

    Timing: the ALTO paper's Table 1. --profile paper: its deployment. See docs/simulator.md.
    """
    try:
        timing = TimingModel(
            ttft_s=ttft,
            prefill_s_per_token=prefill_per_token,
            time_per_token_s=time_per_token,
            batch_slowdown=batch_slowdown,
            max_batch=max_batch,
            prefix_cache_blocks=prefix_cache_blocks,
        ).scaled(time_scale)
        get_profile(profile)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    serve(host, port, timing, seed, profile=profile, log_level=log_level)


if __name__ == "__main__":
    typer.run(sim_lm_command)
