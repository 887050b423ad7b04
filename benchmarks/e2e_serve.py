"""Serve an application's LangGraph twin or its no-framework floor over HTTP, as altoflow serves it.

    python benchmarks/e2e_serve.py langgraph claimverify --port 8002
    python benchmarks/e2e_serve.py floor claimverify --port 8003

A LangGraph program and a hand-written asyncio program are libraries; the end-to-end benchmark
serves them the way ``altoflow serve`` serves the app, so that every system pays the same
costs around the pipeline: one uvicorn process (uvloop when installed, as ``altoflow serve``
uses) that writes uvicorn's access line for each request, as ``altoflow serve`` does at its
default log level, ``POST /v1/run`` with the request's fields as JSON, NDJSON events back
(``{"type": "output", "stage", "value"}`` as each output is ready, then ``{"type": "done"}``, or
``{"type": "error"}``), ``GET /healthz``. The twin streams the LangGraph way,
``graph.astream(stream_mode="updates")``: an event for each node update as its node ends (so its
first output is the answer node's, as it is for altoflow). The floor streams its own events.
The LM is the apps' (``ALTOFLOW_LM*``), so all systems call the same ``altoflow sim-lm``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NDJSON = [(b"content-type", b"application/x-ndjson"), (b"cache-control", b"no-cache")]


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def events_of(system: str, app: str) -> Any:
    """The function from a request's fields to its events, for ``system`` and ``app``."""
    if system == "floor":
        floor = _load(HERE / "floor" / f"{app}.py", f"floor_{app}")
        return floor.stream
    if system != "langgraph":
        raise SystemExit(f"e2e_serve: system is langgraph or floor, not {system!r}")
    twin = _load(HERE / "langgraph" / f"{app}.py", f"twin_{app}")
    initial = {"claimverify": {"report": []}, "ragmapreduce": {"summaries": []},
               "selfconsistency": {"paths": []}, "judgefilter": {"judgements": []}}[app]
    defaults = _defaults(twin.run)

    async def stream(**fields: Any) -> AsyncIterator[dict]:
        state = {**defaults, **fields, **initial}
        if "options" in state:
            state["options"] = tuple(state["options"])
        async for update in twin.GRAPH.astream(state, stream_mode="updates"):
            for node, value in update.items():
                yield {"type": "output", "stage": node, "value": value}

    return stream


def _defaults(fn: Any) -> dict[str, Any]:
    import inspect

    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _line(event: dict) -> bytes:
    return json.dumps(event, default=str).encode() + b"\n"


def create_app(stream: Any) -> Any:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"status": "ok"}'})
            return
        if scope["path"] != "/v1/run" or scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"not found"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": NDJSON})
        try:
            async for event in stream(**json.loads(body)):
                await send({"type": "http.response.body", "body": _line(event), "more_body": True})
            last = {"type": "done"}
        except Exception as exc:  # noqa: BLE001 - the request's failure is its last event
            last = {"type": "error", "error": f"{type(exc).__name__}: {exc}"}
        await send({"type": "http.response.body", "body": _line(last), "more_body": False})

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=["langgraph", "floor"])
    parser.add_argument("app", choices=["claimverify", "ragmapreduce", "selfconsistency", "judgefilter"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args(argv)
    serve(create_app(events_of(args.system, args.app)), args.host, args.port)


def serve(app: Any, host: str, port: int) -> None:
    """Serve ``app`` as ``altoflow serve`` serves a pipeline: uvicorn, uvloop when installed,
    uvicorn's access line per request (altoflow serve's default log level)."""
    import uvicorn

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    uvicorn.run(app, host=host, port=port, loop=loop, log_level="info")


if __name__ == "__main__":
    main()
