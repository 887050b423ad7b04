"""TLS for replicas on other machines, with the stdlib ``ssl`` module.

The router's ``--listen`` port serves TLS when it is given a certificate and its key; a replica
verifies that certificate against a CA file (``altoflow worker --tls-ca``) and the host name it
connects to. TLS encrypts the connection and authenticates the router; the shared-secret
handshake (``altoflow.wire.handshake``) still runs inside it and is what lets a replica in.
"""

from __future__ import annotations

import ssl

__all__ = ["TlsConfigError", "client_context", "server_context"]


class TlsConfigError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the file and the fix."""


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """The router's context: its certificate chain (PEM) and private key, TLS 1.2 or later."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"cannot load --tls-cert {cert} with --tls-key {key} ({exc}); give a PEM certificate "
            f"and the PEM private key it was made with") from exc
    return context


def client_context(ca: str | None = None, *, cadata: str | None = None) -> ssl.SSLContext:
    """A replica's context: the router's certificate must chain to the CA in the file ``ca``
    (or the PEM text ``cadata``: a Ray actor's, ``runtime.ray_placement``) and name its host."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca, cadata=cadata)
    except (OSError, ssl.SSLError) as exc:
        where = ca if ca is not None else "(the CA handed over by serve --ray)"
        raise TlsConfigError(
            f"cannot load --tls-ca {where} ({exc}); give the PEM certificate of the CA that signed "
            f"the router's --tls-cert (for a self-signed one, that certificate itself)") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
