"""The compiled, serialisable form of a pipeline: what the runtime ships to router and workers.

A plan holds structure only (names, levels, keys, replica counts, import paths). The functions
and operators themselves stay in the user's module; a worker imports the target and finds its
stage by name.
"""

from __future__ import annotations

from typing import Literal

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
        """The ``altoflow compile --format json`` document of design section 8."""
        keys = ("name", "kind", "inputs", "levels_in", "levels_out", "route_key", "replicas")
        return {"stages": [{k: getattr(s, k) for k in keys} for s in self.stages]}
