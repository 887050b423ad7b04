"""Server-sent events: ``POST /v1/run`` with ``Accept: text/event-stream``, for browsers.

The events are the NDJSON ones, each framed as one SSE event whose name is the event's
``type`` and whose data is its JSON object, on one line (JSON text has no raw line breaks):

    event: output
    data: {"type": "output", "stage": "answer", "ancestry": {}, "value": "..."}

NDJSON stays the default; a client gets SSE when its ``Accept`` header lists
``text/event-stream`` at least as high (by ``q``) as ``application/x-ndjson``.
"""

from __future__ import annotations

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


def wants_sse(accept: str) -> bool:
    """Whether an ``Accept`` header asks for SSE rather than NDJSON (see the module docstring)."""
    if SSE not in accept.lower():
        return False
    weights: dict[str, float] = {}
    for media_range in accept.lower().split(","):
        media, *params = (part.strip() for part in media_range.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0  # a malformed weight is taken as "not acceptable"
        weights[media] = max(q, weights.get(media, 0.0))
    sse = weights.get(SSE, 0.0)
    return sse > 0 and sse >= weights.get(NDJSON, 0.0)


def sse_frame(event_type: str, line: bytes) -> bytes:
    """The SSE event for one NDJSON ``line`` (its trailing newline included) of ``event_type``."""
    return b"event: " + event_type.encode() + b"\ndata: " + line.rstrip(b"\n") + b"\n\n"
