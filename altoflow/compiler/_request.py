"""The request schema: one pydantic field per request field, typed by the stages' annotations."""

from __future__ import annotations

import sys
from typing import Any, Mapping, Sequence

import pydantic

from altoflow._errors import CompileError
from altoflow._stage import Param, StageSpec


def build_request_schema(
    pipeline_name: str, stages: Mapping[str, StageSpec], fields: Mapping[str, Sequence[Param]]
) -> type[pydantic.BaseModel]:
    """The request model (``<Name>Request``, extra fields forbidden) of the request fields each
    stage reads (``fields``, by stage name).

    A field read by several stages gets the one annotation they give it and the one default;
    it is required unless every stage that reads it has a default. Raises ``CompileError``
    when two stages type a field differently or give it different defaults.
    """
    uses: dict[str, list[tuple[Param, StageSpec]]] = {}
    for name, spec in stages.items():
        for p in fields[name]:
            uses.setdefault(p.name, []).append((p, spec))
    definitions: dict[str, Any] = {}
    for name, params in uses.items():
        typed = [(p, s) for p, s in params if p.annotation is not Any]
        for p, s in typed[1:]:
            if p.annotation != typed[0][0].annotation:
                raise CompileError(
                    f"request field '{name}' has two types: {_tname(typed[0][0].annotation)} in "
                    f"{typed[0][1].describe()} and {_tname(p.annotation)} in {s.describe()}. "
                    f"Annotate it the same way in both stages."
                )
        defaults = [(p, s) for p, s in params if not p.required]
        for p, s in defaults[1:]:
            if p.default != defaults[0][0].default:
                raise CompileError(
                    f"request field '{name}' has two defaults: {defaults[0][0].default!r} in "
                    f"{defaults[0][1].describe()} and {p.default!r} in {s.describe()}. Give it one."
                )
        required = len(defaults) < len(params)
        annotation = typed[0][0].annotation if typed else Any
        definitions[name] = (annotation, ... if required else defaults[0][0].default)
    model_name = "".join(w.capitalize() for w in pipeline_name.split("_") if w) + "Request"
    return pydantic.create_model(
        model_name if model_name.isidentifier() else "Request",
        __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **definitions,
    )


def _tname(annotation: Any) -> str:
    return getattr(annotation, "__name__", repr(annotation))


MAX_DEPTH = 64
"""How deep a request field's value may nest lists, tuples, sets and dicts (``[[1]]`` is 2).

The same in every runtime: ``altoflow.run`` refuses deeper values as the HTTP API does, so a
request that runs in-process also runs served, where values cross the wire between processes.
"""

MAX_ERRORS = 20
"""The most validation errors an ``InputError`` (and a 422 answer) lists; it counts the rest."""


def value_problem(name: str, value: Any) -> str | None:
    """What makes a request field's value one that no runtime takes, or None: nesting deeper
    than ``MAX_DEPTH``, or an int with more digits than Python turns into text (JSON numbers
    are text; ``sys.get_int_max_str_digits()``, 4300 by default)."""
    t = type(value)
    if t is str or t is float or t is bool or (t is int and value.bit_length() < 8192):
        return None  # the common cases, at no cost (8192 bits are 2467 digits)
    if not isinstance(value, (list, tuple, dict, set, frozenset, int)):
        return None
    too_big = _int_limit()
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (list, tuple, set, frozenset)):
            if depth >= MAX_DEPTH:
                return _too_deep(name)
            stack.extend((item, depth + 1) for item in v if type(item) not in _FLAT)
        elif isinstance(v, dict):
            if depth >= MAX_DEPTH:
                return _too_deep(name)
            stack.extend((item, depth + 1) for item in v.values() if type(item) not in _FLAT)
        elif too_big is not None and isinstance(v, int) and not isinstance(v, bool) and (
                v >= too_big or -v >= too_big):
            digits = sys.get_int_max_str_digits()
            return (f"request field '{name}' holds an int of more than {digits} digits, more than "
                    f"a JSON number may have here; send it as a string, or split it")
    return None


def _too_deep(name: str) -> str:
    return (f"request field '{name}' nests lists and dicts more than {MAX_DEPTH} levels deep; "
            f"a request value may nest at most {MAX_DEPTH} (flatten it, or send it as a string)")


def _int_limit() -> int | None:
    digits = sys.get_int_max_str_digits()
    if digits == 0:
        return None
    if _INT_LIMIT.get(digits) is None:
        _INT_LIMIT.clear()
        _INT_LIMIT[digits] = 10**digits
    return _INT_LIMIT[digits]


_INT_LIMIT: dict[int, int] = {}
_FLAT = frozenset({str, float, bool, type(None), bytes})
