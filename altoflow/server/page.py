"""The live page ``altoflow serve`` answers ``GET /`` with: three static files of this package.

``static/index.html`` loads ``static/live.js`` and ``static/live.css`` from the same server; the
script reads ``GET /v1/graph`` (the stages and the request schema), sends the form to
``POST /v1/run`` as JSON and reads its NDJSON events as they stream, and polls ``GET /metrics``.
Nothing else is loaded: no build step, no CDN, and a ``Content-Security-Policy`` of the page's
own origin only. docs/serving.md ("The live page") describes what the page shows.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

# The files under /static/, and their media types; nothing else is served from there.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
    "live.css": "text/css; charset=utf-8",
}

HEADERS = {
    # The page may load, fetch and run only what this server serves.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def page_routes() -> list[BaseRoute]:
    """``GET /`` (the page) and ``GET /static/{name}`` (its files; 404 for any other name)."""
    files = resources.files("altoflow.server") / "static"
    assets = {name: (files / name).read_bytes() for name in ASSETS}

    def asset(name: str) -> Response:
        return Response(assets[name], media_type=ASSETS[name], headers=HEADERS)

    async def index(request: Request) -> Response:
        return asset("index.html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            return Response(f"no such file: /static/{name} (the page's files are "
                            f"{', '.join(sorted(assets))})\n", status_code=404,
                            media_type="text/plain; charset=utf-8")
        return asset(name)

    return [
        Route("/", index, methods=["GET"]),
        Route("/static/{name:path}", static, methods=["GET"]),
    ]
