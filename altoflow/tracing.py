"""OpenTelemetry tracing, turned on from Python: ``altoflow.tracing.enable()``.

``altoflow serve --otel`` (or ``ALTOFLOW_OTEL=1``) does the same from the command line. With it
on, every request is a span and every stage invocation a span under it, and an LM call that a
stage makes through ``altoflow.lm.OpenAILM`` a span under that; docs/serving.md ("Tracing")
lists the spans and their attributes. It needs the ``otel`` extra (``pip install
'altoflow[otel]'``); without it, and while it is off, altoflow imports no OpenTelemetry at all.

    from opentelemetry.sdk.trace import TracerProvider
    import altoflow.tracing

    altoflow.tracing.enable()                   # the OTEL_* variables say where spans go
    altoflow.tracing.enable(TracerProvider())   # or a provider of your own

A ``ServedIngress`` started while tracing is on starts its replica processes with ``--otel``:
they make their stage spans with a provider configured from the same ``OTEL_*`` variables.
"""

from altoflow._tracing import disable, enable, enabled

__all__ = ["disable", "enable", "enabled"]
