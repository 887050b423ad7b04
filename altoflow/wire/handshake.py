"""The handshake of a replica that connects over TCP: an HMAC-SHA256 challenge and response.

Over a UNIX socket the permissions of the socket's directory are the authentication, and a
replica sends HELLO at once. Over TCP:

    router -> replica  CHALLENGE(nonce_c)
    replica -> router  HELLO(..., nonce_r, proof=replica_proof(secret, nonce_c, hello))
    router -> replica  READY(..., proof=router_proof(secret, nonce_c, hello))

Each side proves that it knows the shared secret over a nonce the other chose, so neither a
replayed HELLO nor a fake router gets through; the HELLO fields are covered so that they cannot
be swapped.

Before its HELLO is verified a TCP peer is a stranger, so the router holds it to less: frames of
at most PRE_AUTH_MAX_FRAME_SIZE bytes (a HELLO is under 200), and HANDSHAKE_TIMEOUT seconds from
connecting (after TLS, if any) to a verified HELLO.
"""

from __future__ import annotations

import hashlib
import hmac

from altoflow.wire.frame import Hello, LocalProtocolError, RemoteProtocolError

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "NONCE_SIZE",
    "PRE_AUTH_MAX_FRAME_SIZE",
    "AuthenticationError",
    "replica_proof",
    "router_proof",
    "verify_proof",
]

NONCE_SIZE = 16
PRE_AUTH_MAX_FRAME_SIZE = 4096
HANDSHAKE_TIMEOUT = 5.0


class AuthenticationError(RemoteProtocolError):
    """The peer's handshake proof does not match the shared secret."""


# Each proof's HMAC starts with its own label, so that a replica's proof can never pass for the
# router's. The labels are fixed strings: the protocol version is in the HELLO, which is covered.
_REPLICA_LABEL = b"altoflow/1 replica"
_ROUTER_LABEL = b"altoflow/1 router"


def _mac(secret: bytes, label: bytes, *fields: bytes) -> bytes:
    if not secret:
        raise LocalProtocolError("the shared secret is empty; set one for TCP replicas")
    mac = hmac.new(secret, label, hashlib.sha256)
    for field in fields:
        # Length-prefixed, so that no two field lists give the same byte string.
        mac.update(len(field).to_bytes(4, "little"))
        mac.update(field)
    return mac.digest()


def _hello_fields(hello: Hello) -> tuple[bytes, ...]:
    return (
        hello.stage.encode(),
        hello.slot.to_bytes(4, "little"),
        hello.protocol_version.to_bytes(4, "little"),
        hello.pid.to_bytes(4, "little"),
        hello.nonce,
    )


def _check_nonce(nonce: bytes, whose: str) -> None:
    if len(nonce) != NONCE_SIZE:
        raise AuthenticationError(f"the {whose} nonce has {len(nonce)} bytes, expected {NONCE_SIZE}")


def replica_proof(secret: bytes, challenge_nonce: bytes, hello: Hello) -> bytes:
    """The replica's proof for its HELLO (the `proof` field itself is not covered)."""
    _check_nonce(challenge_nonce, "router's challenge")
    _check_nonce(hello.nonce, "replica's hello")
    return _mac(secret, _REPLICA_LABEL, challenge_nonce, *_hello_fields(hello))


def router_proof(secret: bytes, challenge_nonce: bytes, hello: Hello) -> bytes:
    """The router's proof for its READY, over its own challenge and the replica's nonce."""
    _check_nonce(challenge_nonce, "router's challenge")
    _check_nonce(hello.nonce, "replica's hello")
    return _mac(secret, _ROUTER_LABEL, challenge_nonce, hello.nonce)


def verify_proof(expected: bytes, received: bytes, *, peer: str) -> None:
    """Raise AuthenticationError unless `received` equals `expected`, in constant time."""
    if not hmac.compare_digest(expected, received):
        raise AuthenticationError(
            f"{peer} failed the handshake: its proof does not match the shared secret "
            "(both ends must be started with the same secret)"
        )
