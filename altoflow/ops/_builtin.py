"""The built-in operators: sum, count, min, max, mean, collect, concat, topk, filter, first, any, all, reduce."""

from __future__ import annotations

import builtins
import copy
from typing import Any, Callable

from altoflow.ops._base import Aggregator, Index, Ordered

_EMPTY = object()


def _fn(f: Any) -> str:
    """A short name for a user's function in an operator's repr."""
    return (getattr(f, "__name__", None) or repr(f)).strip("<>")


class Sum(Aggregator[Any]):
    """Sum of the values: numbers, numpy arrays, Counters; 0 when empty.

    Values are added in arrival order, so ``+`` must not depend on order: strings, lists and
    tuples are refused (their ``+`` concatenates; ``ops.concat`` and ``ops.collect`` order them
    by ancestry). The first value starts the sum (rather than 0), so values whose ``+`` does not
    accept 0, such as ``collections.Counter``, sum as well.
    """

    public_name = "ops.sum"

    def create(self) -> Any:
        return _EMPTY

    def add(self, state: Any, value: Any, index: Index) -> Any:
        if isinstance(value, (str, bytes, list, tuple)):
            hint = "ops.concat" if isinstance(value, (str, bytes)) else "ops.collect"
            raise TypeError(
                f"ops.sum got a {type(value).__name__}, whose + concatenates in arrival order; "
                f"use {hint}, which orders by ancestry"
            )
        return value if state is _EMPTY else state + value

    def merge(self, a: Any, b: Any) -> Any:
        if a is _EMPTY:
            return b
        return a if b is _EMPTY else a + b

    def result(self, state: Any) -> Any:
        return 0 if state is _EMPTY else state

    def __repr__(self) -> str:
        return "ops.sum"


class Count(Aggregator[int]):
    """How many values were folded (with ``pred``: for how many it holds); 0 for an empty group."""

    public_name = "ops.count"

    def __init__(self, pred: Callable[[Any], Any] | None = None) -> None:
        self.pred = pred

    def create(self) -> int:
        return 0

    def add(self, state: int, value: Any, index: Index) -> int:
        return state + (1 if self.pred is None or self.pred(value) else 0)

    def merge(self, a: int, b: int) -> int:
        return a + b

    def result(self, state: int) -> int:
        return state

    def __repr__(self) -> str:
        return "ops.count" if self.pred is None else f"ops.count(pred={_fn(self.pred)})"


class _Extreme(Aggregator[Any]):
    _pick: Callable[[Any, Any], Any]

    def create(self) -> Any:
        return _EMPTY

    def add(self, state: Any, value: Any, index: Index) -> Any:
        return value if state is _EMPTY else self._pick(state, value)

    def merge(self, a: Any, b: Any) -> Any:
        if a is _EMPTY:
            return b
        return a if b is _EMPTY else self._pick(a, b)

    def result(self, state: Any) -> Any:
        return None if state is _EMPTY else state


class Min(_Extreme):
    """The smallest value; None for an empty group."""

    public_name = "ops.min"
    _pick = staticmethod(builtins.min)

    def __repr__(self) -> str:
        return "ops.min"


class Max(_Extreme):
    """The largest value; None for an empty group."""

    public_name = "ops.max"
    _pick = staticmethod(builtins.max)

    def __repr__(self) -> str:
        return "ops.max"


class Mean(Aggregator[tuple]):
    """Arithmetic mean; None for an empty group."""

    public_name = "ops.mean"

    def create(self) -> tuple:
        return (0, 0)

    def add(self, state: tuple, value: Any, index: Index) -> tuple:
        return (state[0] + value, state[1] + 1)

    def merge(self, a: tuple, b: tuple) -> tuple:
        return (a[0] + b[0], a[1] + b[1])

    def result(self, state: tuple) -> Any:
        return None if state[1] == 0 else state[0] / state[1]

    def __repr__(self) -> str:
        return "ops.mean"


class Collect(Ordered):
    """The values as a list in ancestry order; [] for an empty group."""

    public_name = "ops.collect"

    def finish(self, values: list) -> list:
        return values

    def __repr__(self) -> str:
        return "ops.collect"


class Concat(Ordered):
    """The string values joined with ``sep`` in ancestry order; "" for an empty group."""

    public_name = "ops.concat"

    def __init__(self, sep: str = "") -> None:
        if not isinstance(sep, str):
            raise TypeError(f"ops.concat(sep={sep!r}): sep must be a string")
        self.sep = sep

    def add(self, state: list, value: Any, index: Index) -> list:
        if not isinstance(value, str):
            raise TypeError(
                f"ops.concat joins strings, but got a {type(value).__name__} ({value!r:.60}); "
                f"return str from the stage, or use ops.collect for other values"
            )
        return super().add(state, value, index)

    def finish(self, values: list) -> str:
        return self.sep.join(values)

    def __repr__(self) -> str:
        return f"ops.concat(sep={self.sep!r})"


class TopK(Aggregator[list]):
    """The ``k`` values with the largest ``key`` (the value itself by default), largest first.

    Ties go to the lower ancestry index, so the result does not depend on arrival order.
    """

    public_name = "ops.topk"

    def __init__(self, k: int, key: Callable[[Any], Any] | None = None) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ValueError(f"ops.topk(k={k!r}): k must be an int >= 0")
        self.k = k
        self.key = key

    def create(self) -> list:
        return []

    def add(self, state: list, value: Any, index: Index) -> list:
        state.append((value if self.key is None else self.key(value), index, value))
        if len(state) > 2 * self.k + 8:  # keep the state bounded, prune in batches
            state[:] = self._best(state)
        return state

    def _best(self, entries: list) -> list:
        by_index = sorted(entries, key=lambda e: e[1])
        # sort(reverse=True) is stable: among equal keys, lower ancestry stays first.
        return sorted(by_index, key=lambda e: e[0], reverse=True)[: self.k]

    def merge(self, a: list, b: list) -> list:
        return self._best(a + b)

    def result(self, state: list) -> list:
        return [e[2] for e in self._best(state)]

    def __repr__(self) -> str:
        return f"ops.topk({self.k})" if self.key is None else f"ops.topk({self.k}, key={_fn(self.key)})"


class Filter(Aggregator[list]):
    """The values for which ``pred`` holds, as a list in ancestry order; [] for an empty group."""

    public_name = "ops.filter"

    def __init__(self, pred: Callable[[Any], Any]) -> None:
        if not callable(pred):
            raise TypeError(f"ops.filter(pred={pred!r}): pred must be callable")
        self.pred = pred

    def create(self) -> list:
        return []

    def add(self, state: list, value: Any, index: Index) -> list:
        if self.pred(value):
            state.append((index, value))
        return state

    def merge(self, a: list, b: list) -> list:
        return a + b

    def result(self, state: list) -> list:
        return [v for _, v in sorted(state, key=lambda iv: iv[0])]

    def __repr__(self) -> str:
        return f"ops.filter({_fn(self.pred)})"


class First(Aggregator[Any]):
    """The first value in ancestry order (for which ``pred`` holds); None if there is none."""

    public_name = "ops.first"

    def __init__(self, pred: Callable[[Any], Any] | None = None) -> None:
        self.pred = pred

    def create(self) -> Any:
        return _EMPTY

    def add(self, state: Any, value: Any, index: Index) -> Any:
        if self.pred is not None and not self.pred(value):
            return state
        if state is _EMPTY or index < state[0]:
            return (index, value)
        return state

    def merge(self, a: Any, b: Any) -> Any:
        if a is _EMPTY:
            return b
        if b is _EMPTY:
            return a
        return a if a[0] <= b[0] else b

    def result(self, state: Any) -> Any:
        return None if state is _EMPTY else state[1]

    def decided(self, state: Any) -> bool:
        # Nothing can come before an all-zero index, so the answer cannot change any more.
        return state is not _EMPTY and not any(state[0])

    def __repr__(self) -> str:
        return "ops.first" if self.pred is None else f"ops.first({_fn(self.pred)})"


class _Quantifier(Aggregator[bool]):
    """``any`` and ``all``: the state stays at the empty group's answer until one value flips
    it, and from then on the answer cannot change (it is decided)."""

    empty: bool  # the answer for an empty group

    def __init__(self, pred: Callable[[Any], Any] = bool) -> None:
        self.pred = pred

    def create(self) -> bool:
        return self.empty

    def add(self, state: bool, value: Any, index: Index) -> bool:
        return state if state is not self.empty else bool(self.pred(value))

    def merge(self, a: bool, b: bool) -> bool:
        return a if a is not self.empty else b

    def result(self, state: bool) -> bool:
        return state

    def decided(self, state: bool) -> bool:
        return state is not self.empty

    def __repr__(self) -> str:
        return self.public_name if self.pred is bool else f"{self.public_name}({_fn(self.pred)})"


class Any_(_Quantifier):
    """True if ``pred`` holds for some value; False for an empty group. Decided at the first true."""

    public_name = "ops.any"
    empty = False


class All(_Quantifier):
    """True if ``pred`` holds for every value; True for an empty group. Decided at the first false."""

    public_name = "ops.all"
    empty = True


class Reduce(Ordered):
    """``fn(fn(initial, v0), v1) ...`` over the values in ancestry order; ``initial`` when empty."""

    public_name = "ops.reduce"

    def __init__(self, fn: Callable[[Any, Any], Any], initial: Any) -> None:
        if not callable(fn):
            raise TypeError(f"ops.reduce(fn={fn!r}, ...): fn must be callable")
        self.fn = fn
        self.initial = initial

    def finish(self, values: list) -> Any:
        acc = copy.deepcopy(self.initial)  # a mutable initial must not leak between groups
        for v in values:
            acc = self.fn(acc, v)
        return acc

    def __repr__(self) -> str:
        return f"ops.reduce({_fn(self.fn)}, {self.initial!r})"
