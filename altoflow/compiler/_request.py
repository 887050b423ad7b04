"""The request schema: one pydantic field per request field, typed by the stages' annotations."""

from __future__ import annotations

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
