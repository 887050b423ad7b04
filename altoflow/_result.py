"""``Event`` and ``Result``: what a request produced, in-process or served, and the JSON form of
events (``encode_event``, ``jsonable``) that ``POST /v1/run`` streams and ``altoflow run`` prints.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import pydantic

EventType = Literal["output", "partial", "done", "error"]


@dataclass(frozen=True)
class Event:
    """One event of a request, as streamed in NDJSON by ``POST /v1/run``.

    Attributes mirror the JSON keys, and ``event["stage"]`` works as well as ``event.stage``.
    """

    type: EventType
    stage: str | None = None
    ancestry: dict[str, int] = field(default_factory=dict)
    value: Any = None
    error: str | None = None
    exc_type: str | None = None
    # Additive, and left out of == so that an event compares as it did before they existed:
    # the served request's id (done and error events), and a stage failure's traceback.
    request_id: str | None = field(default=None, compare=False)
    traceback: str | None = field(default=None, compare=False, repr=False)
    delta: str | None = None  # partial events only


    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def to_json(self) -> dict[str, Any]:
        """The event's NDJSON object, with ``value`` as given (``encode_event`` makes it JSON)."""
        if self.type == "output":
            return {"type": "output", "stage": self.stage, "ancestry": self.ancestry,
                    "value": self.value}
        if self.type == "partial":
            return {"type": "partial", "stage": self.stage, "ancestry": self.ancestry,
                    "delta": self.delta}
        # request_id and traceback are added only when known: a request served over HTTP has
        # an id, a stage failure a traceback (unless the server keeps tracebacks to itself).
        if self.type == "error":
            obj = {"type": "error", "stage": self.stage, "ancestry": self.ancestry,
                   "error": self.error, "exc_type": self.exc_type}
            if self.traceback is not None:
                obj["traceback"] = self.traceback
        else:
            obj = {"type": "done"}
        if self.request_id is not None:
            obj["request_id"] = self.request_id
        return obj

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Event":
        return cls(
            type=obj["type"],
            stage=obj.get("stage"),
            ancestry=dict(obj.get("ancestry") or {}),
            value=obj.get("value"),
            error=obj.get("error"),
            exc_type=obj.get("exc_type"),
            request_id=obj.get("request_id"),
            traceback=obj.get("traceback"),
            delta=obj.get("delta"),
        )


_new = object.__new__


def output_event(stage: str, ancestry: dict[str, int], value: Any) -> Event:
    """``Event("output", stage, ancestry, value)``, built without the frozen dataclass's
    ``__init__`` (1 us against 2.8 here; the router builds one per output item)."""
    event = _new(Event)
    event.__dict__.update(type="output", stage=stage, ancestry=ancestry, value=value, error=None,
                          exc_type=None, request_id=None, traceback=None, delta=None)
    return event


def partial_event(stage: str, ancestry: dict[str, int], delta: str) -> Event:
    """``Event("partial", stage, ancestry, delta=delta)``, built as ``output_event`` builds its
    event (one per streamed delta)."""
    event = _new(Event)
    event.__dict__.update(type="partial", stage=stage, ancestry=ancestry, value=None, error=None,
                          exc_type=None, request_id=None, traceback=None, delta=delta)
    return event


def done_event() -> Event:
    """``Event("done")``, built as ``output_event`` builds its event."""
    event = _new(Event)
    event.__dict__.update(type="done", stage=None, ancestry={}, value=None, error=None, exc_type=None,
                          request_id=None, traceback=None, delta=None)
    return event


class Result(Mapping[str, Any]):
    """The outputs of one request.

    ``result[stage]`` is the single value of a depth-0 output stage, and the list of a nested
    output stage's values in ancestry order (lexicographic by index). ``result.events`` keeps
    every output event in arrival order; ``partial`` events are not kept (they preview values
    that the outputs hold whole), so a served result equals ``altoflow.run``'s.
    """

    def __init__(self, events: list[Event], output_levels: Mapping[str, list[str]]) -> None:
        self.events = [e for e in events if e.type == "output"]
        self._levels = dict(output_levels)
        self._values: dict[str, list[tuple[tuple[int, ...], Any]]] = {s: [] for s in self._levels}
        for e in self.events:
            levels = self._levels.get(e.stage or "")
            if levels is None:
                continue
            self._values[e.stage].append((tuple(e.ancestry[l] for l in levels), e.value))
        for vals in self._values.values():
            vals.sort(key=lambda iv: iv[0])

    def __getitem__(self, stage: str) -> Any:
        if stage not in self._levels:
            raise KeyError(
                f"{stage!r} is not an output stage of this pipeline; outputs: "
                f"{', '.join(self._levels) or 'none'}. Mark a stage with @stage(output=True) to "
                f"get its values."
            )
        vals = self._values[stage]
        if self._levels[stage]:
            return [v for _, v in vals]
        if not vals:
            raise KeyError(
                f"output stage {stage!r} produced no value for this request (its item was "
                f"dropped, or an input it joins was)"
            )
        return vals[0][1]

    def __iter__(self) -> Iterator[str]:
        return (s for s in self._levels if self._levels[s] or self._values[s])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def items_with_ancestry(self, stage: str) -> list[tuple[dict[str, int], Any]]:
        """``[(ancestry, value), ...]`` of one output stage, in ancestry order."""
        levels = self._levels[stage]
        return [(dict(zip(levels, idx)), v) for idx, v in self._values[stage]]

    def to_dict(self) -> dict[str, Any]:
        return {s: self[s] for s in self}

    def __repr__(self) -> str:
        return f"Result({self.to_dict()!r})"


# -- the JSON form of events -------------------------------------------------------------------


def encode_event(event: Event, *, request_id: str | None = None,
                 tracebacks: bool = True) -> tuple[bytes, bool]:
    """One NDJSON line for ``event``, and whether it ends the request.

    An output value that cannot be made JSON gives an ``error`` line instead. ``request_id``
    goes into the line that ends the request (``done`` or ``error``); ``tracebacks=False``
    leaves an error's traceback out.
    """
    obj = event.to_json()
    if event.type == "partial":
        try:
            return _line(obj), False
        except UnicodeEncodeError:  # a lone surrogate, from an inline stage: escaped, as errors are
            obj["delta"] = obj["delta"].encode("utf-8", "backslashreplace").decode("utf-8")
            return _line(obj), False
    if event.type == "output":
        try:
            obj["value"] = jsonable(event.value)
            return _line(obj), False
        except (TypeError, ValueError, RecursionError) as exc:
            obj = Event(
                "error", event.stage, event.ancestry, exc_type=type(exc).__name__,
                error=f"stage '{event.stage}' produced a value that cannot be sent as JSON: "
                      f"{exc}. Return JSON-like values (str, int, float, bool, None, lists, "
                      f"dicts with str keys), numpy arrays, pydantic models, dataclasses or "
                      f"bytes, or convert it in a stage.",
            ).to_json()
    if not tracebacks:
        obj.pop("traceback", None)
    if request_id is not None:
        obj["request_id"] = request_id
    return _line(obj), True if obj["type"] == "error" else event.type == "done"


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode()


def jsonable(value: Any, path: str = "value") -> Any:
    """``value`` as plain JSON data: lists, dicts with string keys, str, numbers, bool, None.

    numpy arrays and scalars via ``tolist()``, pydantic models via ``model_dump(mode="json")``,
    dataclasses as dicts, tuples and sets as lists, enums by value, dates and times in ISO 8601,
    and bytes as a base64 string (standard alphabet, padded). Anything else raises TypeError,
    naming where in ``value`` it sits (``path`` is what the top is called). Non-finite floats
    are written as ``NaN``/``Infinity``, as Python's json module does.
    """
    return _jsonable(value, path)


# Values that are their own JSON form (exactly these types: a subclass, say an IntEnum, goes
# through ``_jsonable``).
_PLAIN = frozenset({str, int, float, bool, type(None)})

# Where a value sits: the path's text at the top, then a (parent, separator, key) triple per
# step down, made into text only for an error message (``_path``). Building the text for every
# item, when nothing went wrong, cost more than the rest of the walk.
_Where = Any


def _jsonable(value: Any, where: _Where) -> Any:
    if type(value) in _PLAIN or isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy (and array-likes)
        return _jsonable(value.tolist(), where)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not (k is None or isinstance(k, (str, int, float, bool))):
                raise TypeError(f"{_path(where)} has a key {k!r} of type {type(k).__name__}; "
                                f"JSON object keys are strings")
            out[k] = v if type(v) in _PLAIN else _jsonable(v, (where, "[", k))
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        return [v if type(v) in _PLAIN else _jsonable(v, (where, "[", i)) for i, v in enumerate(value)]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name), (where, ".", f.name))
                for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return _jsonable(value.value, where)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    raise TypeError(f"{_path(where)} is a {type(value).__module__}.{type(value).__qualname__}, "
                    f"which has no JSON form")


def _path(where: _Where) -> str:
    """The text of a ``_Where``: ``value['a'][1].x``."""
    steps = []
    while type(where) is tuple:
        where, sep, key = where
        steps.append(f"[{key!r}]" if sep == "[" else f".{key}")
    return where + "".join(reversed(steps))
