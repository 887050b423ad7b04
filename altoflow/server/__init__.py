"""The serving runtime's front: the HTTP API (``create_app``) over an ``Ingress``.

``LocalIngress`` runs requests on the in-process reference executor; ``ServedIngress`` runs
them on a supervised router and its worker processes (``altoflow serve``). Both follow
``Ingress``, so the HTTP API, and its metrics, are the same over either.
"""

from altoflow._errors import Overloaded
from altoflow.runtime.stream import RequestStream
from altoflow.server.http import create_app, serve_in_thread
from altoflow.server.ingress import Ingress, LocalIngress
from altoflow.server.served import ServedIngress

__all__ = ["Ingress", "LocalIngress", "Overloaded", "RequestStream", "ServedIngress", "create_app",
           "serve_in_thread"]
