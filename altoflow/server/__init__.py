"""The serving runtime's front: the HTTP API (``create_app``) over an ``Ingress``.

``LocalIngress`` runs requests on the in-process reference executor; the router's ingress runs
them on worker processes. Both follow ``Ingress``, so the HTTP API is the same over either.
"""

from altoflow.server.http import create_app, serve_in_thread
from altoflow.server.ingress import Ingress, LocalIngress, Overloaded, RequestStream

__all__ = ["Ingress", "LocalIngress", "Overloaded", "RequestStream", "create_app", "serve_in_thread"]
