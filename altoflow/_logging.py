"""Log records of the ``altoflow`` command: where a request's id goes, and the two formats.

Loggers are the stdlib's, named under ``altoflow.`` (``altoflow.router``, ``altoflow.server``,
``altoflow.worker``, ``altoflow.supervisor``); a library user configures them like any other.
``configure`` is what ``altoflow serve``, ``run`` and ``worker`` call for ``--log-level`` and
``--log-format``: one handler on the root logger, on stderr, so that uvicorn's lines and the
user's own stage logging come out in the same format.

A record may carry ``request_id``, ``stage``, ``ancestry`` and ``replica`` (``extra=`` of a
logging call). Records logged while the HTTP layer serves a request (uvicorn's access line
included) get the request's id from ``REQUEST_ID``, a context variable set for that request's
task; a worker process stamps every record with its replica name (``stage#slot``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
from typing import Any, Literal

LogFormat = Literal["text", "json"]
CHATTY_LOGGERS = ("httpx", "httpcore")
"""Libraries that log a line per HTTP call at INFO; ``configure`` shows them at DEBUG only."""
LEVELS = ("debug", "info", "warning", "error", "critical")

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "altoflow_request_id", default=None)
"""The id of the request whose task is running (set by the HTTP layer)."""

MAX_REQUEST_ID = 128
"""The longest ``X-Request-Id`` taken from a client; a longer or unprintable one is replaced."""


def new_request_id() -> str:
    """A fresh request id: 32 hex digits (128 random bits, the size of a UUID)."""
    return secrets.token_hex(16)


def valid_request_id(value: str | None) -> bool:
    """Whether a client's ``X-Request-Id`` may be used as it is: 1 to ``MAX_REQUEST_ID``
    printable ASCII characters without spaces (so a log line cannot be forged with it)."""
    return (value is not None and 0 < len(value) <= MAX_REQUEST_ID
            and all("!" <= c <= "~" for c in value))


def format_ancestry(ancestry: Any) -> str:
    if not ancestry:
        return "the request"
    return "/".join(f"{k}={v}" for k, v in dict(ancestry).items())


_FRAME = re.compile(r'^  File "(.*)", line (\d+), in (.*)$', re.M)


def log_stage_failure(log: logging.Logger, request_id: str | None, stage: str | None,
                      ancestry: Any, detail: str, traceback: str | None, *,
                      dropped: bool = False) -> None:
    """One record for a stage's failure (ERROR; WARNING when ``dropped`` under
    ``on_error="drop"``): the request id, stage and ancestry as fields and in the message, the
    ``file:line`` of the user's code (the first frame of ``traceback``, which starts at the
    user's frame: ``altoflow._errors.user_traceback``), then the traceback itself (the record's
    ``user_traceback``, which both formatters print)."""
    frame = _FRAME.search(traceback or "")
    at = f" at {frame[1]}:{frame[2]} in {frame[3]}" if frame else ""
    request = f"request {request_id}: " if request_id is not None else ""
    what = "raised on" if dropped else "failed on"
    then = " (on_error='drop': the item is dropped)" if dropped else ""
    log.log(logging.WARNING if dropped else logging.ERROR, "%sstage '%s' %s %s%s: %s%s",
            request, stage, what, format_ancestry(ancestry), at, detail, then,
            extra={"request_id": request_id, "stage": stage, "ancestry": dict(ancestry or {}),
                   "user_traceback": traceback or None})


class ContextFilter(logging.Filter):
    """Gives every record the fields the formatters read: ``request_id`` from the record's
    ``extra``, else from ``REQUEST_ID``; ``replica`` from the record, else this process's."""

    def __init__(self, replica: str | None = None) -> None:
        super().__init__()
        self.replica = replica

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        if getattr(record, "replica", None) is None:
            record.replica = self.replica
        for name in ("stage", "ancestry"):
            if not hasattr(record, name):
                setattr(record, name, None)
        return True


class TextFormatter(logging.Formatter):
    """``2026-12-02 09:50:00,123 ERROR altoflow.router [request=ab12 stage=verify claim=2]
    message``, then the traceback, if any, on the lines below."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if getattr(record, "replica", None):
            parts.append(f"replica={record.replica}")
        if getattr(record, "request_id", None):
            parts.append(f"request={record.request_id}")
        if getattr(record, "stage", None):
            parts.append(f"stage={record.stage}")
        if getattr(record, "ancestry", None):
            parts.append(format_ancestry(record.ancestry))
        record.context = f" [{' '.join(parts)}]" if parts else ""
        text = super().format(record)
        tb = getattr(record, "user_traceback", None)
        return f"{text}\n{tb.rstrip()}" if tb else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    and ``request_id``, ``stage``, ``ancestry``, ``replica`` where known; ``traceback`` when
    the record has one (``exc_info``, or a stage failure's ``user_traceback``)."""

    def format(self, record: logging.LogRecord) -> str:
        import datetime

        obj: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
                    .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("request_id", "stage", "ancestry", "replica"):
            value = getattr(record, name, None)
            if value is not None:
                obj[name] = dict(value) if name == "ancestry" else value
        tb = getattr(record, "user_traceback", None)
        if tb is None and record.exc_info:
            tb = self.formatException(record.exc_info)
        if tb:
            obj["traceback"] = tb
        return json.dumps(obj, ensure_ascii=False, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a test runner swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure(level: str = "info", format: LogFormat = "text", *,
              replica: str | None = None, stream: Any = None) -> logging.Handler:
    """One handler on the root logger, writing ``format`` lines to ``stream`` (stderr) from
    ``level`` up, for the whole process (the command line's ``--log-level``/``--log-format``).
    Replaces the handler an earlier call installed; returns the new one."""
    if level.lower() not in LEVELS:
        raise ValueError(f"log level {level!r}: take one of {', '.join(LEVELS)}")
    if format not in ("text", "json"):
        raise ValueError(f"log format {format!r}: take text or json")
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    handler.addFilter(ContextFilter(replica))
    handler._altoflow = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_altoflow", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = getattr(logging, level.upper())
    root.setLevel(numeric)
    logging.getLogger("altoflow").setLevel(numeric)
    # HTTP clients log every call at INFO (httpx: one line per LM request, a dozen per request
    # of the claim verifier, over 2% of the server's CPU); only --log-level debug shows them.
    for chatty in CHATTY_LOGGERS:
        logging.getLogger(chatty).setLevel(numeric if numeric <= logging.DEBUG else
                                           max(numeric, logging.WARNING))
    return handler
