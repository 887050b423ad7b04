"""``altoflow.partial(delta)``: a stage streams text deltas of the value it is building.

An LM stage that writes an answer token by token can show the tokens to the client as they
come, as ``partial`` events, while the stages downstream get the finished value only (they
never see a partial). The runner marks every invocation with a context variable, ``_CURRENT``,
that names the stage, the ancestry of the item being worked on and where its partials go;
``partial`` reads it. Sync stages run in anyio's worker threads, which run in a copy of the caller's
context, so the mark is there too; a delta sent from such a thread is handed to the event
loop with ``call_soon_threadsafe``, in order, ahead of the call's own result (which comes back
the same way), so every partial of an item reaches the client before the item's output.

Where the partials go depends on the runtime: a worker process sends a PARTIAL frame to its
router, an inline replica passes the text through its in-memory pipe, the in-process executor
hands a ``partial`` event to whoever watches the request's events (``LocalIngress``, ``altoflow
run --events``). ``altoflow.run`` has no watcher: there a partial costs a check and nothing more.
"""

from __future__ import annotations

import asyncio
import threading
from contextvars import ContextVar
from typing import Callable

#: The most characters one ``partial`` call takes; stream a longer text in pieces. It keeps a
#: delta far below the wire's frame limit however it is encoded.
MAX_DELTA_CHARS = 64 * 1024

PartialCallback = Callable[[tuple[int, ...], str], None]


class PartialSink:
    """Where one replica's partials go: ``send(ancestry, delta)`` runs ``callback`` on the
    event loop's thread, at once from that thread and via ``call_soon_threadsafe`` from
    another. Made by the runner on the loop, on its first invocation."""

    __slots__ = ("callback", "loop", "thread")

    def __init__(self, callback: PartialCallback) -> None:
        self.callback = callback
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio, through anyio): from_thread below
            self.loop = None
        self.thread = threading.get_ident()

    def send(self, ancestry: tuple[int, ...], delta: str) -> None:
        if threading.get_ident() == self.thread:
            self.callback(ancestry, delta)
        elif self.loop is not None:
            self.loop.call_soon_threadsafe(self.callback, ancestry, delta)
        else:
            import anyio.from_thread

            anyio.from_thread.run_sync(self.callback, ancestry, delta)


#: The mark of the running invocation: ``[stage, ancestry of its input, its replica's sink]``
#: (the sink ``None`` when nobody watches, as under ``altoflow.run``), emptied when the
#: invocation ends. A list rather than a small class: it is made for every invocation of every
#: stage, and this is half the cost (about 0.6 us against 1.2 here, set and reset included).
Mark = list

_CURRENT: ContextVar[Mark | None] = ContextVar("altoflow_invocation", default=None)


def partial(delta: str) -> None:
    """Stream ``delta``, the next piece of the text the running stage is building for its
    current item, to the client as a ``partial`` event.

    Call it from a stage's own code while altoflow runs it (sync or async, a generator too);
    the event names the stage and the ancestry of the item the stage is working on, and comes
    before that item's output. Downstream stages never see partials, only what the stage
    returns or yields. An empty delta sends nothing; a delta must be a ``str`` of at most
    ``MAX_DELTA_CHARS`` characters. Raises ``RuntimeError`` outside a stage's invocation.
    """
    current = _CURRENT.get()
    if not current:
        when = ("after its stage's invocation had ended (a task or thread it started still "
                "runs?)" if current is not None else "outside a stage")
        raise RuntimeError(
            f"altoflow.partial() was called {when}: it streams a piece of the value the running "
            f"stage is building, so call it from the stage's own code while altoflow runs it "
            f"(altoflow.run, a server), not from a plain function call, a test that calls the "
            f"stage directly, or a task that outlives the invocation")
    if type(delta) is not str:
        if not isinstance(delta, str):
            raise TypeError(
                f"altoflow.partial() takes a str, not {type(delta).__name__}, in stage "
                f"'{current[0]}'; stream text, e.g. partial(token) or partial(str(value))")
        delta = str(delta)
    if len(delta) > MAX_DELTA_CHARS:
        raise ValueError(
            f"altoflow.partial() got {len(delta)} characters in stage '{current[0]}', more "
            f"than one call takes ({MAX_DELTA_CHARS}); stream the text in smaller pieces")
    sink = current[2]
    if delta and sink is not None:
        sink.send(current[1], delta)


def in_stage() -> bool:
    """Whether the caller runs inside a stage's invocation, where ``partial`` may be called."""
    return bool(_CURRENT.get())


def watched() -> bool:
    """Whether the running invocation's partials go anywhere: False outside a stage, and in
    one whose request's client asked for none (``/v1/run?partials=false``) or that nobody
    watches (``altoflow.run``). Code that would make each delta only to stream it (an LM
    client's ``complete(partial=True)``) asks this once instead of paying for every delta."""
    current = _CURRENT.get()
    return bool(current) and current[2] is not None
