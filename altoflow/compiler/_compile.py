"""The compiler: stages in, a checked graph with level stacks, kinds, keys and joins out.

Rules (design section 3): edges come from parameter names; a stage's inputs form a chain under
"is a prefix of" (the deepest drive and are zipped, shallower ones are broadcast); map keeps the
stack, fan-out pushes a level, an aggregate cuts the stack before the level it folds; the routing
key of an aggregate is the stack it keeps.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import pydantic

from altoflow._errors import CompileError, GraphError, InputError, LevelError, where
from altoflow._stage import Param, StageSpec
from altoflow.compiler._pipeline import Pipeline
from altoflow.compiler.plan import Plan, StagePlan


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
            raise InputError(f"invalid request for pipeline '{self.plan.name}': {exc}") from exc
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


def _fmt_stack(levels: tuple[str, ...] | list[str]) -> str:
    return "[" + "/".join(levels) + "]" if levels else "[] (one item per request)"


def compile_pipeline(pipeline: Pipeline) -> CompiledPipeline:
    specs = list(pipeline.specs)
    if not specs:
        raise GraphError(
            f"pipeline '{pipeline.name}' has no stages. Mark functions with @stage, and give "
            f"Pipeline.from_module the module that defines them."
        )
    by_name: dict[str, StageSpec] = {}
    for spec in specs:
        if spec.name in by_name:
            other = by_name[spec.name]
            raise GraphError(
                f"two stages are named '{spec.name}': {other.describe()} and {spec.describe()}. "
                f"Stage names must be unique: rename one function, or pass name=... to @stage."
            )
        by_name[spec.name] = spec

    inputs = {s.name: [p.name for p in s.params if p.name in by_name] for s in specs}
    fields = {s.name: [p for p in s.params if p.name not in by_name] for s in specs}

    graph = nx.DiGraph()
    for s in specs:
        graph.add_node(s.name)
    for s in specs:
        for i in inputs[s.name]:
            graph.add_edge(i, s.name)
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = [u for u, _ in cycle] + [cycle[0][0]]
        lines = "\n".join(f"  {by_name[v].describe()} reads '{u}'" for u, v in cycle)
        raise GraphError(
            f"stages form a cycle: {' -> '.join(names)}.\n{lines}\n"
            f"A parameter named like a stage receives that stage's items; rename the parameter "
            f"that closes the loop (it is then a request field) or restructure the pipeline."
        )

    order_index = {s.name: i for i, s in enumerate(specs)}
    order = list(nx.lexicographical_topological_sort(graph, key=lambda n: order_index[n]))

    request_model, field_names = _request_model(pipeline, specs, fields)

    levels: dict[str, str] = {}
    stack_out: dict[str, tuple[str, ...]] = {}
    stage_plans: list[StagePlan] = []
    consumers = {n: [c for c in order if n in inputs[c]] for n in order}
    for name in order:
        spec = by_name[name]
        ins = inputs[name]
        stack_in = _stack_in(spec, ins, stack_out, by_name)
        depth = len(stack_in)
        drives = [i for i in ins if len(stack_out[i]) == depth] if ins else []
        broadcasts = [i for i in ins if len(stack_out[i]) < depth]

        if spec.fanout is not None:
            if spec.fanout in levels:
                raise LevelError(
                    f"stage {spec.describe()} opens level '{spec.fanout}', which stage "
                    f"{by_name[levels[spec.fanout]].describe()} opens already. Level names are "
                    f"unique in a pipeline: pick another name, e.g. fanout='{spec.fanout}_{name}'."
                )
            levels[spec.fanout] = name

        route_key: list[str] | None = None
        over = None
        if spec.aggregate is not None:
            if not stack_in:
                raise LevelError(
                    f"stage {spec.describe()} aggregates, but its input has no open level: it "
                    f"gets one item per request, so there is no group to fold. Aggregate "
                    f"downstream of a fanout stage, or make it a plain map (drop aggregate=)."
                )
            over = spec.over if spec.over is not None else stack_in[-1]
            if over not in stack_in:
                elsewhere = (f" Level '{over}' is opened by '{levels[over]}' but is not open "
                             f"here." if over in levels else "")
                raise LevelError(
                    f"stage {spec.describe()} has over='{over}', which is not an open level of "
                    f"its input {_fmt_stack(stack_in)}.{elsewhere} "
                    f"Use one of: {', '.join(repr(l) for l in stack_in)}."
                )
            cut = stack_in[: stack_in.index(over)]
            route_key = list(cut)
            out = cut + ((spec.fanout,) if spec.fanout else ())
        elif spec.fanout is not None:
            out = stack_in + (spec.fanout,)
        else:
            out = stack_in
        stack_out[name] = out

        is_output = spec.output if spec.output is not None else not consumers[name]
        stage_plans.append(
            StagePlan(
                name=name,
                kind=_kind(spec, ins, consumers[name]),
                inputs=ins,
                fields=[p.name for p in fields[name]],
                params=[p.name for p in spec.params],
                drives=drives,
                broadcasts=broadcasts,
                levels_in=list(stack_in),
                levels_out=list(out),
                route_key=route_key,
                fanout=spec.fanout,
                over=over,
                operator=repr(spec.aggregate) if spec.aggregate is not None else None,
                replicas=spec.replicas,
                concurrency=spec.concurrency,
                gpus=spec.gpus,
                cpus=spec.cpus,
                timeout=spec.timeout,
                retries=spec.retries,
                on_error=spec.on_error,
                output=is_output,
                call_kind=spec.call_kind,
                is_class=spec.is_class,
                module=spec.obj.__module__ or "",
                qualname=spec.obj.__qualname__,
                location=where(spec.obj),
                consumers=consumers[name],
            )
        )

    if not any(p.output for p in stage_plans):
        raise GraphError(
            f"pipeline '{pipeline.name}' has no output stage: every sink has output=False. "
            f"Set output=True on the stage whose values the client should get."
        )

    plan = Plan(
        name=pipeline.name,
        target=pipeline.target,
        stages=stage_plans,
        levels=levels,
        request_schema=request_model.model_json_schema(),
    )
    return CompiledPipeline(plan=plan, specs=by_name, graph=graph, request_model=request_model)


def _stack_in(
    spec: StageSpec,
    ins: list[str],
    stack_out: dict[str, tuple[str, ...]],
    by_name: dict[str, StageSpec],
) -> tuple[str, ...]:
    if not ins:
        return ()
    deepest = max(ins, key=lambda i: len(stack_out[i]))
    top = stack_out[deepest]
    for i in ins:
        s = stack_out[i]
        if top[: len(s)] != s:
            raise LevelError(
                f"stage {spec.describe()} joins '{deepest}' {_fmt_stack(top)} with '{i}' "
                f"{_fmt_stack(s)}: these items come from different branches of fan-out, so no "
                f"item of one has the ancestry of the other. Aggregate one of them first, e.g. a "
                f"stage @stage(aggregate=ops.collect, over='{_first_diff(top, s)}') reading "
                f"'{i if len(s) >= len(top) else deepest}', and join its output instead."
            )
    return top


def _first_diff(a: tuple[str, ...], b: tuple[str, ...]) -> str:
    for x, y in zip(a, b):
        if x != y:
            return y
    return (b or a)[-1]


def _kind(spec: StageSpec, ins: list[str], consumers: list[str]) -> str:
    if spec.aggregate is not None:
        return "aggregate"
    if spec.fanout is not None:
        return "fanout"
    if len(ins) > 1:
        return "join"
    if not ins:
        return "source"
    if not consumers:
        return "sink"
    return "map"


def _request_model(
    pipeline: Pipeline, specs: list[StageSpec], fields: dict[str, list[Param]]
) -> tuple[type[pydantic.BaseModel], list[str]]:
    """The request schema: one pydantic field per request field, typed by the annotations."""
    uses: dict[str, list[tuple[Param, StageSpec]]] = {}
    for spec in specs:
        for p in fields[spec.name]:
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
        # A field is optional only if every stage that reads it gives it a default.
        required = len(defaults) < len(params)
        annotation = typed[0][0].annotation if typed else Any
        definitions[name] = (annotation, ... if required else defaults[0][0].default)
    model_name = "".join(w.capitalize() for w in pipeline.name.split("_") if w) + "Request"
    model = pydantic.create_model(
        model_name if model_name.isidentifier() else "Request",
        __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **definitions,
    )
    return model, list(definitions)


def _tname(annotation: Any) -> str:
    return getattr(annotation, "__name__", repr(annotation))
