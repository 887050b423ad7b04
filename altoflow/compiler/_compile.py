"""The compiler: stages in, a checked graph with level stacks, kinds, keys and joins out.

The rules, each applied by one step of ``compile_pipeline``:

- A parameter named like a stage is an edge from that stage; any other parameter is a request
  field, typed by its annotation.
- Every edge carries a level stack, the levels open on its items. A stage with no upstream
  stage gets ``[]`` (one item per request). A map keeps its input stack, a fanout pushes its
  level, an aggregate cuts the stack before the level it folds (``over``, by default the
  innermost). Level names are unique in a pipeline.
- A stage's inputs form a chain under "is a prefix of": the deepest drive and are zipped by
  equal ancestry, the shallower ones are broadcast to the deeper items. Inputs on different
  branches of fan-out cannot be joined.
- The routing key of an aggregate is the stack it keeps: every item of one group goes to one
  replica. Every other stage is load-balanced.
"""

from __future__ import annotations

import difflib
import typing
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Protocol

import networkx as nx
import pydantic

from altoflow._errors import CompileError, GraphError, LevelError, where
from altoflow._stage import Param, StageSpec
from altoflow.compiler._compiled import CompiledPipeline
from altoflow.compiler._request import build_request_schema
from altoflow.compiler.plan import Plan, StagePlan, near_stage_note
from altoflow.wire.codec import type_name, uncarried_type, unencodable_annotation_fix


class StageSet(Protocol):
    """What the compiler reads of a pipeline (``Pipeline`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def target(self) -> str | None: ...

    @property
    def specs(self) -> tuple[StageSpec, ...]: ...


def compile_pipeline(pipeline: StageSet) -> CompiledPipeline:
    """Check ``pipeline`` against the rules above and build its plan; raises ``CompileError``
    (``GraphError``, ``LevelError``) naming the stage and the fix."""
    stages = collect_stages(pipeline)
    check_wire_types(stages)
    edges = resolve_edges(stages)
    near = find_near_stages(stages, edges)
    with _noting_near_stages(stages, near):
        levels = infer_level_stacks(stages, edges)
        joins = check_joins(stages, edges, levels)
        keys = compute_route_keys(levels)
        request_model = build_request_schema(pipeline.name, stages, edges.fields)
        plan = build_plan(pipeline, stages, edges, levels, joins, keys, near, request_model)
    return CompiledPipeline(plan=plan, specs=stages, graph=edges.graph, request_model=request_model)


# -- collect stages ----------------------------------------------------------------------------


def collect_stages(pipeline: StageSet) -> dict[str, StageSpec]:
    """The pipeline's stages by name, in definition order. Raises ``GraphError`` when there are
    none or two share a name."""
    if not pipeline.specs:
        raise GraphError(
            f"pipeline '{pipeline.name}' has no stages. Mark functions with @stage, and give "
            f"Pipeline.from_module the module that defines them."
        )
    stages: dict[str, StageSpec] = {}
    for spec in pipeline.specs:
        if spec.name in stages:
            other = stages[spec.name]
            raise GraphError(
                f"two stages are named '{spec.name}': {other.describe()} and {spec.describe()}. "
                f"Stage names must be unique: rename one function, or pass name=... to @stage."
            )
        stages[spec.name] = spec
    return stages


# -- resolve edges -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Edges:
    """Who reads whom, by stage name."""

    graph: nx.DiGraph
    order: list[str]  # topological; ties keep definition order
    inputs: dict[str, list[str]]  # upstream stages, in parameter order
    fields: dict[str, list[Param]]  # request fields, in parameter order
    consumers: dict[str, list[str]]  # downstream stages, in topological order


def check_wire_types(stages: dict[str, StageSpec]) -> None:
    """Raises ``CompileError`` for a stage whose parameter or return annotation is a class whose
    values cannot go between replicas (the served runtime's codec carries JSON-like values, numpy,
    dataclasses, attrs and pydantic models and protobuf messages), naming the stage, the type and the fix."""
    for spec in stages.values():
        fn = spec.obj.__call__ if spec.is_class else spec.obj
        returned = spec.return_annotation
        if isinstance(returned, str):  # `from __future__ import annotations`
            try:
                returned = typing.get_type_hints(fn).get("return")
            except Exception:  # noqa: BLE001  # an unresolvable hint says nothing for certain
                returned = None
        hints = [(f"parameter '{p.name}'", p.annotation) for p in spec.params]
        hints.append(("return annotation", returned))
        for what, hint in hints:
            tp = uncarried_type(hint)
            if tp is not None:
                raise CompileError(
                    f"stage '{spec.name}' ({where(spec.obj)}): its {what} is {_hint_repr(hint, tp)}; "
                    f"{unencodable_annotation_fix(tp)}."
                )


def _hint_repr(hint: typing.Any, tp: type) -> str:
    if isinstance(hint, type):
        return type_name(hint)
    return repr(hint).replace("typing.", "").replace(f"{tp.__module__}.{tp.__qualname__}", type_name(tp))


def resolve_edges(stages: dict[str, StageSpec]) -> Edges:
    """Each parameter named like a stage is an edge from it; every other one is a request
    field. Raises ``GraphError`` for a cycle, naming each stage on it and what it reads."""
    inputs = {name: [p.name for p in s.params if p.name in stages] for name, s in stages.items()}
    fields = {name: [p for p in s.params if p.name not in stages] for name, s in stages.items()}
    graph = nx.DiGraph()
    graph.add_nodes_from(stages)
    graph.add_edges_from((i, name) for name in stages for i in inputs[name])
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = [u for u, _ in cycle] + [cycle[0][0]]
        lines = "\n".join(f"  {stages[v].describe()} reads '{u}'" for u, v in cycle)
        raise GraphError(
            f"stages form a cycle: {' -> '.join(names)}.\n{lines}\n"
            f"A parameter named like a stage receives that stage's items; rename the parameter "
            f"that closes the loop (it is then a request field) or restructure the pipeline."
        )
    position = {name: i for i, name in enumerate(stages)}
    order = list(nx.lexicographical_topological_sort(graph, key=position.__getitem__))
    consumers = {n: [c for c in order if n in inputs[c]] for n in order}
    return Edges(graph=graph, order=order, inputs=inputs, fields=fields, consumers=consumers)


def find_near_stages(stages: dict[str, StageSpec], edges: Edges) -> dict[str, dict[str, str]]:
    """Request fields named almost like a stage, by stage: ``{"priced": {"itmes": "items"}}``.

    A misspelt input silently becomes a request field, and the error it causes (a missing
    field, a stage without an open level) names another stage; these are reported beside it.
    Close means a similar length and a ``difflib`` ratio of at least 0.8, and not a stage the
    same function reads already. Raises nothing.
    """
    near: dict[str, dict[str, str]] = {}
    for name in edges.order:
        for p in edges.fields[name]:
            candidates = [s for s in stages if s != name and s not in edges.inputs[name]
                          and abs(len(s) - len(p.name)) <= 2]
            close = difflib.get_close_matches(p.name, candidates, n=1, cutoff=0.8)
            if close:
                near.setdefault(name, {})[p.name] = close[0]
    return near


@contextmanager
def _noting_near_stages(stages: dict[str, StageSpec], near: dict[str, dict[str, str]]) -> Iterator[None]:
    """A ``CompileError`` raised inside gets the near-stage notes: a misspelt input is a likely
    cause of it, whichever stage it names."""
    try:
        yield
    except CompileError as exc:
        notes = [near_stage_note(stages[s].describe(), f, n) for s, found in near.items()
                 for f, n in found.items()]
        if not notes:
            raise
        raise type(exc)("\n".join([str(exc), *notes])).with_traceback(exc.__traceback__) from None


# -- infer level stacks ------------------------------------------------------------------------


@dataclass(frozen=True)
class StageLevels:
    """The level stacks of one stage's input and output, and the level it folds (aggregates)."""

    levels_in: tuple[str, ...]
    levels_out: tuple[str, ...]
    over: str | None


@dataclass(frozen=True)
class Levels:
    """The level stacks of a pipeline's stages, and which stage opens each level."""

    stages: dict[str, StageLevels]  # every stage before ``unjoinable``, in topological order
    opened_by: dict[str, str]  # level -> the stage whose fanout opens it, in order
    unjoinable: str | None  # the first stage whose inputs do not chain; ``check_joins`` rejects it


def infer_level_stacks(stages: dict[str, StageSpec], edges: Edges) -> Levels:
    """Each stage's stacks, in topological order: the input stack is the deepest input's,
    a map keeps it, a fanout pushes its level, an aggregate cuts it before ``over``.

    Inference stops at the first stage whose inputs do not form a chain (``check_joins`` says
    why), so that no error is reported on a stack guessed from it. Raises ``LevelError`` for a
    level opened twice, an aggregate with no open level, and an ``over`` that is not open on
    the stage's input.
    """
    found: dict[str, StageLevels] = {}
    opened_by: dict[str, str] = {}
    for name in edges.order:
        spec, ins = stages[name], edges.inputs[name]
        if _off_branch(ins, found) is not None:
            return Levels(stages=found, opened_by=opened_by, unjoinable=name)
        stack_in = max((found[i].levels_out for i in ins), key=len, default=())
        if spec.fanout is not None:
            if spec.fanout in opened_by:
                raise LevelError(
                    f"stage {spec.describe()} opens level '{spec.fanout}', which stage "
                    f"{stages[opened_by[spec.fanout]].describe()} opens already. Level names are "
                    f"unique in a pipeline: pick another name, e.g. fanout='{spec.fanout}_{name}'."
                )
            opened_by[spec.fanout] = name
        over = None
        if spec.aggregate is not None:
            over = _folded_level(spec, stack_in, opened_by)
            out = _kept(stack_in, over) + ((spec.fanout,) if spec.fanout else ())
        elif spec.fanout is not None:
            out = stack_in + (spec.fanout,)
        else:
            out = stack_in
        found[name] = StageLevels(levels_in=stack_in, levels_out=out, over=over)
    return Levels(stages=found, opened_by=opened_by, unjoinable=None)


def _folded_level(spec: StageSpec, stack_in: tuple[str, ...], opened_by: dict[str, str]) -> str:
    """The level an aggregate folds away: ``over``, or the innermost open one."""
    if not stack_in:
        raise LevelError(
            f"stage {spec.describe()} aggregates, but its input has no open level: it "
            f"gets one item per request, so there is no group to fold. Aggregate "
            f"downstream of a fanout stage, or make it a plain map (drop aggregate=)."
        )
    over = spec.over if spec.over is not None else stack_in[-1]
    if over not in stack_in:
        elsewhere = (f" Level '{over}' is opened by '{opened_by[over]}' but is not open "
                     f"here." if over in opened_by else "")
        raise LevelError(
            f"stage {spec.describe()} has over='{over}', which is not an open level of "
            f"its input {_fmt_stack(stack_in)}.{elsewhere} "
            f"Use one of: {', '.join(repr(l) for l in stack_in)}."
        )
    return over


def _kept(stack_in: tuple[str, ...], over: str) -> tuple[str, ...]:
    """What an aggregate over ``over`` keeps of its input stack: the levels outside ``over``."""
    return stack_in[: stack_in.index(over)]


def _off_branch(ins: list[str], found: dict[str, StageLevels]) -> tuple[str, str] | None:
    """``(deepest input, an input not on its branch)``, or None when the inputs chain."""
    if not ins:
        return None
    deepest = max(ins, key=lambda i: len(found[i].levels_out))
    top = found[deepest].levels_out
    for i in ins:
        s = found[i].levels_out
        if top[: len(s)] != s:
            return deepest, i
    return None


def _fmt_stack(levels: tuple[str, ...] | list[str]) -> str:
    return "[" + "/".join(levels) + "]" if levels else "[] (one item per request)"


# -- check joins -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Join:
    """How a stage's inputs meet: the deepest drive (zipped), the shallower are broadcast."""

    drives: list[str]
    broadcasts: list[str]


def check_joins(stages: dict[str, StageSpec], edges: Edges, levels: Levels) -> dict[str, Join]:
    """How each stage's inputs meet. Raises ``LevelError`` for the first stage that joins
    inputs from different branches of fan-out, naming both stacks and the aggregate that fixes
    it."""
    if levels.unjoinable is not None:
        spec, ins = stages[levels.unjoinable], edges.inputs[levels.unjoinable]
        pair = _off_branch(ins, levels.stages)
        assert pair is not None
        deepest, other = pair
        top, s = levels.stages[deepest].levels_out, levels.stages[other].levels_out
        raise LevelError(
            f"stage {spec.describe()} joins '{deepest}' {_fmt_stack(top)} with '{other}' "
            f"{_fmt_stack(s)}: these items come from different branches of fan-out, so no "
            f"item of one has the ancestry of the other. Aggregate one of them first, e.g. a "
            f"stage @stage(aggregate=ops.collect, over='{_first_diff(top, s)}') reading "
            f"'{other if len(s) >= len(top) else deepest}', and join its output instead."
        )
    joins: dict[str, Join] = {}
    for name in edges.order:
        depth = len(levels.stages[name].levels_in)
        ins = edges.inputs[name]
        joins[name] = Join(
            drives=[i for i in ins if len(levels.stages[i].levels_out) == depth],
            broadcasts=[i for i in ins if len(levels.stages[i].levels_out) < depth],
        )
    return joins


def _first_diff(a: tuple[str, ...], b: tuple[str, ...]) -> str:
    for x, y in zip(a, b):
        if x != y:
            return y
    return (b or a)[-1]


# -- compute route keys ------------------------------------------------------------------------


def compute_route_keys(levels: Levels) -> dict[str, list[str] | None]:
    """Each stage's routing key: for an aggregate, the levels it keeps (every item of one group
    hashes to one replica); None for every other stage (load-balanced). Raises nothing: the
    levels were checked when they were inferred."""
    return {
        name: list(_kept(found.levels_in, found.over)) if found.over is not None else None
        for name, found in levels.stages.items()
    }


# -- build the plan ----------------------------------------------------------------------------


def build_plan(
    pipeline: StageSet,
    stages: dict[str, StageSpec],
    edges: Edges,
    levels: Levels,
    joins: dict[str, Join],
    keys: dict[str, list[str] | None],
    near: dict[str, dict[str, str]],
    request_model: type[pydantic.BaseModel],
) -> Plan:
    """The serialisable plan, stages in topological order. A sink is an output unless it says
    ``output=False``; raises ``GraphError`` when no stage is an output."""
    stage_plans: list[StagePlan] = []
    for name in edges.order:
        spec, found, join = stages[name], levels.stages[name], joins[name]
        ins, consumers = edges.inputs[name], edges.consumers[name]
        stage_plans.append(
            StagePlan(
                name=name,
                kind=_kind(spec, ins, consumers),
                inputs=ins,
                fields=[p.name for p in edges.fields[name]],
                params=[p.name for p in spec.params],
                drives=join.drives,
                broadcasts=join.broadcasts,
                levels_in=list(found.levels_in),
                levels_out=list(found.levels_out),
                route_key=keys[name],
                fanout=spec.fanout,
                over=found.over,
                operator=repr(spec.aggregate) if spec.aggregate is not None else None,
                replicas=spec.replicas,
                concurrency=spec.concurrency,
                gpus=spec.gpus,
                cpus=spec.cpus,
                resources=dict(spec.resources),
                timeout=spec.timeout,
                retries=spec.retries,
                on_error=spec.on_error,
                output=spec.output if spec.output is not None else not consumers,
                call_kind=spec.call_kind,
                is_class=spec.is_class,
                module=spec.obj.__module__ or "",
                qualname=spec.obj.__qualname__,
                location=where(spec.obj),
                consumers=consumers,
                near_stages=near.get(name, {}),
            )
        )
    if not any(p.output for p in stage_plans):
        raise GraphError(
            f"pipeline '{pipeline.name}' has no output stage: every sink has output=False. "
            f"Set output=True on the stage whose values the client should get."
        )
    return Plan(
        name=pipeline.name,
        target=pipeline.target,
        stages=stage_plans,
        levels=levels.opened_by,
        request_schema=request_model.model_json_schema(),
    )


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
