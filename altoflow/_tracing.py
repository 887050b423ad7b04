"""OpenTelemetry tracing of requests and stage invocations: off, and free, unless turned on.

Nothing here imports OpenTelemetry at import time. ``enable`` (``altoflow serve --otel``,
``ALTOFLOW_OTEL=1``, or ``altoflow.tracing.enable()`` in Python) imports it, binds a tracer
to ``TRACER``, and from then on the runtime makes spans; while ``TRACER`` is None the runtime's
only cost is one check per request (router, executor) or per frame (``Frame.trace``, empty).

The spans:

- ``request <pipeline>`` (kind SERVER), one per request, from admission to its ``done`` or
  ``error`` (or its cancellation): ``altoflow.request_id``, ``altoflow.pipeline``,
  ``altoflow.outcome`` (done, error, cancelled); an error sets the span's status to ERROR and
  ``altoflow.error.stage`` and ``error.type``. Its parent is the context current where the
  request was submitted: the HTTP layer makes that the incoming W3C ``traceparent``.
- ``stage <name>`` (INTERNAL), one per invocation, a child of its request's span, in the
  process that runs the stage: ``altoflow.stage``, ``altoflow.replica`` (``stage#slot``),
  ``altoflow.ancestry`` (``claim=2/query=0``; empty for the request's own level),
  ``altoflow.items_in`` (the stage inputs joined into the invocation; 0 for a stage of request
  fields only), ``altoflow.items_out`` (the outputs it emitted), ``altoflow.status`` (ok,
  dropped, failed, cancelled); a failure sets ERROR, ``altoflow.error`` and ``error.type``,
  and records the exception where the replica has it. The span is the current one while the
  stage's code runs (in its threads too), so a span the stage starts is its child.
- ``chat <model>`` / ``text_completion <model>`` (CLIENT), ``altoflow.lm.OpenAILM``'s HTTP call,
  a child of the stage span that makes it; the request to the server carries its
  ``traceparent``.

Between the router and a replica process the request span's context travels in each DATA
frame (``Frame.trace``: 25 bytes of trace id, span id and flags; ``tracestate`` is not carried),
and only while the router traces.
"""

from __future__ import annotations

import os
from typing import Any

TRACER: Any = None
"""The tracer while tracing is on in this process (``enable``), else None."""

ENV = "ALTOFLOW_OTEL"
"""The environment variable that turns tracing on for ``altoflow serve``, ``run`` and
``worker`` (``1``, ``true``, ``yes`` or ``on``), as ``--otel`` does."""

EXTRA_HINT = "pip install 'altoflow[otel]'"

# The opentelemetry modules, bound by enable(): the per-span paths look nothing up.
_trace: Any = None
_context: Any = None
_propagate: Any = None
_provider: Any = None  # the provider enable() made from the environment, for flush()


def env_enabled() -> bool:
    """Whether ``ALTOFLOW_OTEL`` asks for tracing."""
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def enable(tracer_provider: Any = None) -> None:
    """Turn tracing on in this process.

    ``tracer_provider``: an OpenTelemetry ``TracerProvider`` to make the spans with (a test's,
    with an in-memory exporter). Without one, the global provider is used if the application
    has set one (``opentelemetry-instrument`` does); otherwise one is made from the standard
    ``OTEL_*`` variables and set as the global provider, so that spans the stages start go to
    the same place: ``OTEL_TRACES_EXPORTER`` (``otlp``, the default, ``console`` or ``none``),
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the other exporter variables,
    ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf``, the default, or ``grpc``),
    ``OTEL_SERVICE_NAME`` (default ``altoflow``), ``OTEL_RESOURCE_ATTRIBUTES``,
    ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``.

    Raises ``ImportError`` naming the extra to install when OpenTelemetry is missing, and
    ``ValueError`` for an ``OTEL_TRACES_EXPORTER`` or protocol it does not know.
    """
    global TRACER, _trace, _context, _propagate, _provider
    try:
        from opentelemetry import context, propagate, trace
    except ImportError as exc:
        raise ImportError(f"tracing needs OpenTelemetry, which the otel extra installs: "
                          f"{EXTRA_HINT}") from exc
    if tracer_provider is None:
        current = trace.get_tracer_provider()
        if isinstance(current, trace.ProxyTracerProvider):  # nobody has set one
            tracer_provider = _provider = _provider_from_env()
            trace.set_tracer_provider(tracer_provider)
        else:
            tracer_provider = current
    _trace, _context, _propagate = trace, context, propagate
    TRACER = tracer_provider.get_tracer("altoflow", _version())


def disable() -> None:
    """Turn tracing off in this process (spans already started still end)."""
    global TRACER
    TRACER = None


def enabled() -> bool:
    """Whether this process traces."""
    return TRACER is not None


def flush(timeout_s: float = 5.0) -> None:
    """Export the spans that wait in the provider ``enable`` made (before an ``os._exit``)."""
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("altoflow")
    except PackageNotFoundError:
        return None


def _provider_from_env() -> Any:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as exc:
        raise ImportError(f"tracing needs the OpenTelemetry SDK, which the otel extra installs: "
                          f"{EXTRA_HINT}") from exc
    attributes = {}
    if not os.environ.get("OTEL_SERVICE_NAME") and \
            "service.name=" not in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = "altoflow"
    provider = TracerProvider(resource=Resource.create(attributes))
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
             if n.strip()]
    for name in names:
        if name == "none":
            continue
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: altoflow exports traces with otlp "
                             f"(the default), console or none")
    return provider


def _otlp_exporter() -> Any:
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    try:
        if protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        elif protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            raise ValueError(f"OTLP protocol {protocol!r} (OTEL_EXPORTER_OTLP_PROTOCOL): take "
                             f"http/protobuf (the default) or grpc")
    except ImportError as exc:
        raise ImportError(f"the OTLP {protocol} exporter is not installed; the otel extra "
                          f"installs both: {EXTRA_HINT}") from exc
    return OTLPSpanExporter()


# -- what the runtime calls, only while TRACER is set ---------------------------------------------


def current_context() -> Any:
    return _context.get_current()


def extract(headers: list[tuple[bytes, bytes]]) -> Any:
    """The context of an HTTP request's ``traceparent`` (and ``tracestate``), by the global
    propagator (W3C trace context unless ``OTEL_PROPAGATORS`` says otherwise)."""
    carrier = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
    return _propagate.extract(carrier)


def attach(ctx: Any) -> Any:
    return _context.attach(ctx)


def detach(token: Any) -> None:
    _context.detach(token)


def start_request(pipeline: str, request_id: str | None, parent: Any = None) -> Any:
    """The request's span, a child of ``parent`` (the current context when None)."""
    attributes = {"altoflow.pipeline": pipeline}
    if request_id is not None:
        attributes["altoflow.request_id"] = request_id
    return TRACER.start_span(f"request {pipeline}", context=parent,
                             kind=_trace.SpanKind.SERVER, attributes=attributes)


def end_request(span: Any, outcome: str, error: Any = None) -> None:
    """``error``: the request's ``ErrorInfo`` (stage, detail, exc_type) when it failed."""
    span.set_attribute("altoflow.outcome", outcome)
    if error is not None:
        if error.stage is not None:
            span.set_attribute("altoflow.error.stage", error.stage)
        span.set_attribute("error.type", error.exc_type or "Error")
        where = f"stage '{error.stage}': " if error.stage is not None else ""
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, f"{where}{error.detail}"))
    span.end()


def context_of(span: Any) -> Any:
    """A context whose current span is ``span``: the parent of the request's stage spans."""
    return _trace.set_span_in_context(span)


def to_bytes(span: Any) -> bytes:
    """``span``'s context as a DATA frame carries it (``Frame.trace``); empty when invalid."""
    sc = span.get_span_context()
    if not sc.is_valid:
        return b""
    return sc.trace_id.to_bytes(16, "big") + sc.span_id.to_bytes(8, "big") + bytes((int(sc.trace_flags),))


def from_bytes(data: bytes) -> Any:
    """The parent context a replica's stage span takes from a DATA frame's ``trace``."""
    sc = _trace.SpanContext(int.from_bytes(data[:16], "big"), int.from_bytes(data[16:24], "big"),
                            is_remote=True, trace_flags=_trace.TraceFlags(data[24]))
    return _trace.set_span_in_context(_trace.NonRecordingSpan(sc))


def start_stage(parent: Any, stage: str, replica: str, levels: list[str], anc: tuple,
                items_in: int) -> Any:
    attributes = {
        "altoflow.stage": stage,
        "altoflow.replica": replica,
        "altoflow.ancestry": "/".join(f"{k}={v}" for k, v in zip(levels, anc[1:])),
        "altoflow.items_in": items_in,
    }
    return TRACER.start_span(f"stage {stage}", context=parent, attributes=attributes)


def end_stage(span: Any, status: str, error: Any, items_out: int) -> None:
    span.set_attribute("altoflow.status", status)
    span.set_attribute("altoflow.items_out", items_out)
    if error is not None and status == "failed":
        span.set_attribute("altoflow.error", error.detail)
        span.set_attribute("error.type", error.exc_type or "Error")
        if error.exception is not None:
            span.record_exception(error.exception)
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, error.detail))
    span.end()


def start_lm_call(operation: str, model: str, url: str) -> tuple[Any, dict[str, str]]:
    """An LM engine's call to a server: its span (a child of the current one, the stage's) and
    the headers that carry the span's context to the server."""
    from urllib.parse import urlsplit

    where = urlsplit(url)
    attributes: dict[str, Any] = {"gen_ai.operation.name": operation, "gen_ai.request.model": model,
                                  "gen_ai.system": "openai", "server.address": where.hostname or ""}
    if where.port is not None:
        attributes["server.port"] = where.port
    span = TRACER.start_span(f"{operation} {model}", kind=_trace.SpanKind.CLIENT,
                             attributes=attributes)
    headers: dict[str, str] = {}
    _propagate.inject(headers, context=_trace.set_span_in_context(span))
    return span, headers


def end_lm_call(span: Any, exc: BaseException | None, deltas: int) -> None:
    span.set_attribute("altoflow.lm.deltas", deltas)
    if exc is not None:
        span.set_attribute("error.type", type(exc).__name__)
        span.record_exception(exc)
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, str(exc)))
    span.end()
