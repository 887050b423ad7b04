"""``CompiledPipeline``: the plan, plus the functions, graph and request model of this process."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import pydantic

from altoflow._errors import InputError
from altoflow._stage import StageSpec
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
            wrong = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
            notes = "".join(f"\n{note}" for note in self.plan.near_stage_notes(wrong))
            raise InputError(f"invalid request for pipeline '{self.plan.name}': {exc}{notes}") from exc
        return {name: getattr(model, name) for name in type(model).model_fields}

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


_PLAIN_TYPES = (str, bytes, int, float, bool)
_MISSING = object()
