"""A request's partial events on their way to a slow consumer: coalesced, and bounded.

A stage may call ``altoflow.partial`` once per LM token, for every item of a fan-out at once,
and the consumer of the request (an HTTP client) may read slower than that. Partials must
never make the server buffer without bound, and never hold anything else up, so each
request's partials pass through a ``PartialBuffer`` between the runtime, which ``offer``s each
new partial event, and the request's ``RequestStream``, which tells it what was ``read``:

- **Coalescing.** While an item (stage and ancestry) has a partial event buffered that the
  consumer has not read yet, a new delta of that item is appended to it instead of making an
  event of its own. A consumer that keeps up sees one event per delta; one that falls behind
  sees fewer, longer ones, and at most one unread partial event per item is ever buffered.
- **A cap.** At most ``limit`` characters of partial text (``PARTIAL_BUFFER_CHARS`` by
  default) may wait unread per request. A delta that would go past it is dropped, and so is
  every later delta of its item, so what a client joins of an item's deltas is always a prefix
  of what the stage streamed, never a text with a hole in it. The item's ``output`` event,
  which is not subject to the cap, still carries the whole value.

Outputs, ``done`` and ``error`` events are not affected: they are buffered as before and
never dropped, merged or reordered. Merging moves a delta to an earlier place in the stream
than it would have had, before other items' events; a partial still comes after the earlier
partials of its item and before its item's output (which arrives after all of them).
"""

from __future__ import annotations

from altoflow._result import Event

#: The most characters of partial text one request holds unread (see the module docstring).
PARTIAL_BUFFER_CHARS = 64 * 1024


class PartialBuffer:
    """The coalescing and the cap of one request's partial events (see the module docstring).

    ``offer(event)`` is the producer's side: ``True`` means buffer this new event; ``False``
    means it was merged into an unread event of its item, or dropped. ``read(event)`` is the
    consumer's: it has taken ``event`` (whose ``delta`` it fills in with what was merged), and
    the item's next delta starts a new event.
    """

    __slots__ = ("_cut", "_unread", "dropped", "limit", "unread_chars")

    def __init__(self, limit: int | None = None) -> None:
        self.limit = PARTIAL_BUFFER_CHARS if limit is None else limit
        if self.limit < 0:
            raise ValueError(f"the partial buffer takes 0 characters or more, not {self.limit}")
        self.unread_chars = 0
        self.dropped = 0  # deltas dropped at the cap, for tests and the curious
        # item -> (its unread event, the deltas merged into it); the items cut at the cap
        self._unread: dict[tuple, tuple[Event, list[str]]] = {}
        self._cut: set[tuple] = set()

    def offer(self, event: Event) -> bool:
        key = (event.stage, *event.ancestry.values())
        delta = event.delta or ""
        if key in self._cut:
            self.dropped += 1
            return False
        if self.unread_chars + len(delta) > self.limit:
            self._cut.add(key)  # its later deltas go too: a client's text stays a prefix
            self.dropped += 1
            return False
        self.unread_chars += len(delta)
        held = self._unread.get(key)
        if held is not None:
            held[1].append(delta)  # joined once, when read: no quadratic concatenation
            return False
        self._unread[key] = (event, [delta])
        return True

    def read(self, event: Event) -> Event:
        key = (event.stage, *event.ancestry.values())
        held = self._unread.get(key)
        if held is not None and held[0] is event:
            del self._unread[key]
            pieces = held[1]
            if len(pieces) > 1:
                event.__dict__["delta"] = "".join(pieces)  # built for this consumer; unseen yet
            self.unread_chars -= len(event.delta or "")
        return event
