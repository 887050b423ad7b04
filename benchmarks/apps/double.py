"""A pipeline for benchmarks/http_request.py: one async stage, as cheap as a stage gets, so that
what a request costs the server is the HTTP layer's and the runtime's fixed cost per request."""

from __future__ import annotations

from altoflow import stage


@stage(output=True)
async def double(x: int) -> int:
    return 2 * x
