"""``Event`` and ``Result``: what a request produced, in-process or served."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

EventType = Literal["output", "done", "error"]


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

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def to_json(self) -> dict[str, Any]:
        """The NDJSON object that ``POST /v1/run`` streams (``value`` as given; encode it yourself)."""
        if self.type == "output":
            return {"type": "output", "stage": self.stage, "ancestry": self.ancestry,
                    "value": self.value}
        if self.type == "error":
            return {"type": "error", "stage": self.stage, "ancestry": self.ancestry,
                    "error": self.error, "exc_type": self.exc_type}
        return {"type": "done"}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Event":
        return cls(
            type=obj["type"],
            stage=obj.get("stage"),
            ancestry=dict(obj.get("ancestry") or {}),
            value=obj.get("value"),
            error=obj.get("error"),
            exc_type=obj.get("exc_type"),
        )


_new = object.__new__


def output_event(stage: str, ancestry: dict[str, int], value: Any) -> Event:
    """``Event("output", stage, ancestry, value)``, built without the frozen dataclass's
    ``__init__`` (1 us against 2.8 here; the router builds one per output item)."""
    event = _new(Event)
    event.__dict__.update(type="output", stage=stage, ancestry=ancestry, value=value, error=None,
                          exc_type=None)
    return event


def done_event() -> Event:
    """``Event("done")``, built as ``output_event`` builds its event."""
    event = _new(Event)
    event.__dict__.update(type="done", stage=None, ancestry={}, value=None, error=None, exc_type=None)
    return event


class Result(Mapping[str, Any]):
    """The outputs of one request.

    ``result[stage]`` is the single value of a depth-0 output stage, and the list of a nested
    output stage's values in ancestry order (lexicographic by index). ``result.events`` keeps
    every output event in arrival order.
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
