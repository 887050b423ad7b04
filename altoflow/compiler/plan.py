"""The compiled, serialisable form of a pipeline: what the runtime ships to router and workers.

A plan holds structure only (names, levels, keys, replica counts, import paths). The functions
and operators themselves stay in the user's module; a worker imports the target and finds its
stage by name.
"""

from __future__ import annotations

from typing import Iterable, Literal

from pydantic import BaseModel, ConfigDict

StageKind = Literal["source", "map", "fanout", "aggregate", "join", "sink"]


class StagePlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    kind: StageKind
    inputs: list[str]  # upstream stages, in parameter order
    fields: list[str]  # request fields the stage reads
    params: list[str]  # every parameter, in call order
    drives: list[str]  # the deepest inputs, zipped by equal ancestry
    broadcasts: list[str]  # shallower inputs, broadcast to deeper items
    levels_in: list[str]
    levels_out: list[str]
    route_key: list[str] | None  # levels keying an aggregate's routing; None = load-balanced
    fanout: str | None
    over: str | None
    operator: str | None
    replicas: int
    concurrency: int
    gpus: float
    cpus: float
    # Custom Ray resources one replica takes (``@stage(resources=)``; ``altoflow serve --ray``).
    resources: dict[str, float] = {}
    timeout: float | None
    retries: int
    on_error: Literal["fail", "drop"]
    output: bool
    call_kind: Literal["function", "generator", "async", "async_generator"]
    is_class: bool
    module: str
    qualname: str
    location: str
    consumers: list[str]
    # Request fields named almost like a stage (a likely misspelt input) -> that stage's name.
    near_stages: dict[str, str] = {}

    @property
    def is_aggregate(self) -> bool:
        return self.operator is not None


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    target: str | None
    stages: list[StagePlan]  # in topological order
    levels: dict[str, str]  # level -> the stage that opens it
    request_schema: dict

    def stage(self, name: str) -> StagePlan:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage named {name!r}; stages: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    @property
    def outputs(self) -> list[StagePlan]:
        return [s for s in self.stages if s.output]

    def contract_json(self) -> dict:
        """The ``altoflow compile --format json`` document: per stage its name, kind, inputs,
        level stacks, routing key and replicas. Code outside altoflow reads it; keep it stable."""
        keys = ("name", "kind", "inputs", "levels_in", "levels_out", "route_key", "replicas")
        return {"stages": [{k: getattr(s, k) for k in keys} for s in self.stages]}

    def near_stage_notes(self, fields: Iterable[str] | None = None) -> list[str]:
        """One line per request field named almost like a stage (of ``fields``, or every one):
        which stage reads it, and the stage it was probably meant to be."""
        wanted = None if fields is None else set(fields)
        return [
            near_stage_note(f"'{s.name}' ({s.location})", field, near)
            for s in self.stages
            for field, near in s.near_stages.items()
            if wanted is None or field in wanted
        ]


def near_stage_note(stage: str, field: str, near: str) -> str:
    """The note for a parameter that names no stage but almost names ``near``; ``stage`` is how
    messages name the stage that has it (``'priced' (app.py:12)``)."""
    return (f"Note: stage {stage} reads '{field}', which is no stage, so it is a request field: "
            f"did you mean `{near}`?")
