"""The operator protocol: plain objects the runtime drives (create / add / merge / result).

An operator never sees the runtime. The runtime keeps one *state* per group, calls ``add`` for
each folded value with the value's index inside the group (its ancestry below the group's
prefix, a tuple of ints), may ``merge`` two partial states of one group, and calls ``result``
once when the group closes. ``result(create())`` is the identity: what an empty group yields.
``decided`` lets the runtime emit a result before the group closes when no later value can
change it (``any`` after a true value, say).
"""

from __future__ import annotations

import abc
import inspect
from typing import Any, Generic, TypeVar

S = TypeVar("S")
Index = tuple[int, ...]


class Aggregator(abc.ABC, Generic[S]):
    """Base class of every operator, built-in or your own. Subclass it and implement four methods."""

    @abc.abstractmethod
    def create(self) -> S:
        """A fresh state for an empty group."""

    @abc.abstractmethod
    def add(self, state: S, value: Any, index: Index) -> S:
        """Fold one value into ``state`` and return the new state (may be the same object)."""

    @abc.abstractmethod
    def merge(self, a: S, b: S) -> S:
        """Combine two states built from disjoint parts of one group."""

    @abc.abstractmethod
    def result(self, state: S) -> Any:
        """The group's value. Must not change ``state``."""

    def decided(self, state: S) -> bool:
        """True when no further value can change ``result(state)``."""
        return False

    def __call__(self) -> "Aggregator[S]":
        # `ops.sum` and `ops.sum()` mean the same; an instance called with no arguments is itself.
        return self


class Ordered(Aggregator[list]):
    """An order-sensitive operator: values are kept with their index and finished in index order.

    Subclasses implement ``finish(values)``, where ``values`` are in ancestry order, so the
    result does not depend on the order in which items happened to arrive.
    """

    def create(self) -> list:
        return []

    def add(self, state: list, value: Any, index: Index) -> list:
        state.append((index, value))
        return state

    def merge(self, a: list, b: list) -> list:
        return a + b

    def result(self, state: list) -> Any:
        return self.finish([v for _, v in sorted(state, key=lambda iv: iv[0])])

    @abc.abstractmethod
    def finish(self, values: list) -> Any:
        """The result of the group's values, given in ancestry order."""


_BUILTIN_HINTS = {"sum": "ops.sum", "min": "ops.min", "max": "ops.max", "any": "ops.any",
                  "all": "ops.all", "len": "ops.count", "list": "ops.collect"}


def resolve_aggregator(value: Any, label: str) -> Aggregator:
    """Turn what a user passed as ``aggregate=`` into an operator instance, or explain the fix."""
    from altoflow._errors import StageDefinitionError

    if isinstance(value, Aggregator):
        return value
    if inspect.isclass(value) and issubclass(value, Aggregator):
        name = getattr(value, "public_name", value.__name__)
        if inspect.isabstract(value):
            missing = ", ".join(sorted(value.__abstractmethods__))
            raise StageDefinitionError(
                f"stage {label}: operator class {value.__name__} does not implement {missing}; "
                f"an operator needs create, add, merge and result (see docs/operators.md)."
            )
        required = [
            p.name for p in list(inspect.signature(value.__init__).parameters.values())[1:]
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if required:
            raise StageDefinitionError(
                f"stage {label}: aggregate={name} needs arguments ({', '.join(required)}); call "
                f"it, e.g. aggregate={name}(...)."
            )
        return value()
    hint = _BUILTIN_HINTS.get(getattr(value, "__name__", ""))
    if hint and getattr(value, "__module__", None) == "builtins":
        raise StageDefinitionError(
            f"stage {label}: aggregate={value.__name__} is Python's builtin; use the operator "
            f"aggregate={hint} (from altoflow import ops)."
        )
    if value is True:
        raise StageDefinitionError(
            f"stage {label}: aggregate=True names no operator; say how to fold the group, e.g. "
            f"aggregate=ops.collect or aggregate=ops.sum."
        )
    raise StageDefinitionError(
        f"stage {label}: aggregate={value!r} is not an operator. Use one from altoflow.ops "
        f"(ops.sum, ops.collect, ops.topk(3), ...) or an instance of your own subclass of "
        f"altoflow.ops.Aggregator."
    )
