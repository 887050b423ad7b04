"""``CompiledPipeline``: the plan, plus the functions, graph and request model of this process."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import pydantic

from altoflow._errors import InputError
from altoflow._stage import StageSpec
from altoflow.compiler._request import MAX_ERRORS, value_problem
from altoflow.compiler.plan import Plan


@dataclass(frozen=True)
class CompiledPipeline:
    """A compiled pipeline: the serialisable ``plan`` plus what only this process has."""

    plan: Plan
    specs: dict[str, StageSpec]
    graph: nx.DiGraph
    request_model: type[pydantic.BaseModel]
    # Instances of class stages, created once and reused by the in-process executor.
    instances: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def validate_request(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The request's fields, checked against the request model; ``InputError`` says what
        is wrong (and which parameter looks like a misspelt stage, when one is missing)."""
        if isinstance(fields, dict):
            self._check_values(fields)
        plain = self._plain_fields
        if plain is not None and type(fields) is dict and len(fields) == len(plain):
            # Every field given, each of exactly its plain type: pydantic would return the
            # values unchanged, at 10-20 us a request (docs/benchmarks-router.md).
            values = {}
            for name, t in plain.items():
                value = fields.get(name, _MISSING)
                if value is _MISSING or (t is not None and type(value) is not t):
                    break  # pydantic says what is wrong, or converts it
                values[name] = value
            else:
                return values
        try:
            model = self.request_model.model_validate(fields)
        except pydantic.ValidationError as exc:
            errors = exc.errors(include_url=False)
            wrong = {str(e["loc"][0]) for e in errors if e["loc"]}
            notes = "".join(f"\n{note}" for note in self.plan.near_stage_notes(wrong))
            shown = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                     for e in errors[:MAX_ERRORS]]
            raise InputError(f"invalid request for pipeline '{self.plan.name}': "
                             f"{_capped(exc, errors)}{notes}", shown, len(errors)) from exc
        return {name: getattr(model, name) for name in type(model).model_fields}

    def _check_values(self, fields: dict[str, Any]) -> None:
        """Refuse what no runtime takes before pydantic sees it: values nested too deep (which
        could take pydantic, or the wire, past Python's recursion limit) and a flood of
        unknown fields (pydantic would spend seconds listing 200 000 of them)."""
        known = self.request_model.model_fields
        if len(fields) > len(known) + MAX_ERRORS:
            unknown = [name for name in fields if name not in known]
            if len(unknown) > MAX_ERRORS:
                shown = ", ".join(repr(n) for n in unknown[:MAX_ERRORS])
                raise InputError(
                    f"invalid request for pipeline '{self.plan.name}': {len(unknown)} fields "
                    f"it does not have: {shown} and {len(unknown) - MAX_ERRORS} more; its "
                    f"fields are: {', '.join(known) or 'none'}")
        for name, value in fields.items():
            problem = value_problem(name, value)
            if problem is not None:
                raise InputError(f"invalid request for pipeline '{self.plan.name}': {problem}")

    @functools.cached_property
    def _plain_fields(self) -> dict[str, type | None] | None:
        """Field -> its type when every field is a plain str, bytes, int, float or bool (None
        for Any); None when any field has another type, where only pydantic can say."""
        plain: dict[str, type | None] = {}
        for name, info in self.request_model.model_fields.items():
            if info.annotation in _PLAIN_TYPES and not info.metadata:
                plain[name] = info.annotation
            elif info.annotation is Any and not info.metadata:
                plain[name] = None
            else:
                return None
        return plain


def _capped(exc: pydantic.ValidationError, errors: list[Any]) -> str:
    """pydantic's message, or for more than ``MAX_ERRORS`` errors the first of them and a count,
    so that a request with 100 000 wrong items gets a short answer."""
    if len(errors) <= MAX_ERRORS:
        return str(exc)
    lines = [f"{len(errors)} validation errors for {exc.title}"]
    for e in errors[:MAX_ERRORS]:
        loc = ".".join(str(part) for part in e["loc"])
        lines.append(f"{loc}\n  {e['msg']} [type={e['type']}]")
    lines.append(f"... and {len(errors) - MAX_ERRORS} more")
    return "\n".join(lines)


_PLAIN_TYPES = (str, bytes, int, float, bool)
_MISSING = object()
