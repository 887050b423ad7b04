"""``altoflow serve``'s HTTP server, whose shutdown has a deadline: ``serve_with_grace``.

It is uvicorn's ``Server`` with signals of its own:

1. The first SIGTERM or SIGINT starts the drain. The ingress takes no new request (503 with
   ``Retry-After``), the listening socket closes (a new connection is refused), idle keep-alive
   connections close, and the requests in flight go on.
2. ``grace`` seconds after the signal, every request still in flight is cancelled: its
   replicas' invocations are cancelled and its stream ends with the ``error`` event whose
   ``exc_type`` is ``Cancelled``, and the connection closes. A response that still has not
   ended ``CUT_AFTER`` seconds later (a client that stopped reading) is cut.
3. The ingress stops: replicas get SHUTDOWN and are waited for, killed if they have not exited
   within 5 s, and the socket directory is removed. ``serve_with_grace`` returns.

A second SIGTERM or SIGINT, at any point, ends it at once: every replica gets SIGKILL, the
socket directory is removed, and the process exits with status 128 + the signal's number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any, Protocol

import uvicorn

# The HTTP server's own log (uvicorn configures it): these lines go with its "Shutting down".
logger = logging.getLogger("uvicorn.error")

SIGNALS = (signal.SIGINT, signal.SIGTERM)

CUT_AFTER = 5.0
"""Seconds, after the grace period, that a cancelled request's response has to end."""


class Drainable(Protocol):
    """What ``serve_with_grace`` needs of an ingress (``ServedIngress`` has it)."""

    def drain(self) -> None: ...

    def cancel_all(self) -> int: ...

    def kill_now(self) -> None: ...


class GracefulServer(uvicorn.Server):
    """uvicorn's server, with the shutdown of this module's docstring."""

    def __init__(self, config: uvicorn.Config, ingress: Drainable, grace: float) -> None:
        if grace < 0:
            raise ValueError(f"the grace period is 0 s or more, not {grace}")
        config.timeout_graceful_shutdown = grace + CUT_AFTER  # type: ignore[assignment]
        super().__init__(config)
        self.ingress = ingress
        self.grace = grace
        self.signalled_at: float | None = None  # time.monotonic() of the first signal
        self.start_failed = False

    async def on_tick(self, counter: int) -> bool:
        # An ingress that starts behind the open port (ServedIngress(wait_ready=False)) and
        # fails to: stop serving, as a failed lifespan startup would have.
        if getattr(self.ingress, "start_error", None) is not None:
            self.start_failed = True
            return True
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own handlers take only a second SIGINT as "now", and raise the signal again
        # once it has shut down; these take either signal, and a clean shutdown returns.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        if self.should_exit:
            self._exit_now(name, 128 + sig)
        self.should_exit = True
        self.signalled_at = time.monotonic()
        self.ingress.drain()
        logger.info("%s: taking no new requests; those in flight have %g s to finish "
                    "(%s again to stop at once)", name, self.grace, name)

    def _exit_now(self, name: str, code: int) -> None:
        logger.warning("%s again: killing the replicas and exiting now", name)
        self.ingress.kill_now()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        waited = 0.0 if self.signalled_at is None else time.monotonic() - self.signalled_at
        deadline = asyncio.get_running_loop().call_later(max(0.0, self.grace - waited),
                                                         self._deadline)
        try:
            await super().shutdown(sockets)
        finally:
            deadline.cancel()

    def _deadline(self) -> None:
        cancelled = self.ingress.cancel_all()
        if cancelled:
            logger.warning("the grace period (%g s) is over: cancelled %d request(s) still in "
                           "flight", self.grace, cancelled)


def serve_with_grace(app: Any, ingress: Drainable, *, host: str, port: int, grace: float,
                     loop: str = "auto", log_level: str = "info") -> bool:
    """Serve ``app`` on ``host:port`` until a signal, then shut down as the module's docstring
    says; returns whether the server had started (``False``: its startup failed, or, for an
    ingress that starts behind the open port, its ``start_error`` was set)."""
    # log_config=None: uvicorn's records go to the handler altoflow._logging.configure set.
    config = uvicorn.Config(app, host=host, port=port, loop=loop, log_level=log_level, log_config=None)
    server = GracefulServer(config, ingress, grace)
    server.run()
    return server.started and not server.start_failed
