"""``@stage``: record what a function is, validate what can be seen at once, return it unchanged."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, TypeVar, overload

from altoflow._errors import StageDefinitionError, describe
from altoflow.ops._base import Aggregator, resolve_aggregator

F = TypeVar("F", bound=Callable[..., Any])

CallKind = Literal["function", "generator", "async", "async_generator"]
SPEC_ATTR = "__altoflow_stage__"
_MISSING = inspect.Parameter.empty


class _Drop:
    """The sentinel a map stage returns to drop its item (``af.DROP``)."""

    _instance: "_Drop | None" = None

    def __new__(cls) -> "_Drop":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "altoflow.DROP"

    def __reduce__(self) -> str:
        return "DROP"


DROP = _Drop()


@dataclass(frozen=True)
class Param:
    """One parameter of a stage function: an upstream stage or a request field (decided later)."""

    name: str
    annotation: Any = Any
    default: Any = _MISSING

    @property
    def required(self) -> bool:
        return self.default is _MISSING


@dataclass(frozen=True)
class StageSpec:
    """Everything ``@stage`` recorded about one function or class."""

    obj: Any
    name: str
    params: tuple[Param, ...]
    call_kind: CallKind
    is_class: bool
    fanout: str | None = None
    aggregate: Aggregator | None = None
    over: str | None = None
    replicas: int = 1
    concurrency: int = 1
    gpus: float = 0
    cpus: float = 1
    timeout: float | None = None
    retries: int = 0
    on_error: Literal["fail", "drop"] = "fail"
    output: bool | None = None
    return_annotation: Any = field(default=Any, compare=False)

    @property
    def is_async(self) -> bool:
        return self.call_kind in ("async", "async_generator")

    @property
    def is_generator(self) -> bool:
        return self.call_kind in ("generator", "async_generator")

    def describe(self) -> str:
        return describe(self.obj, self.name)


def get_spec(obj: Any) -> StageSpec | None:
    """The spec ``@stage`` attached to ``obj``, or ``None`` if it is no stage."""
    spec = getattr(obj, SPEC_ATTR, None)
    # A subclass of a stage class inherits the attribute; it is a stage only if decorated itself.
    if isinstance(spec, StageSpec) and spec.obj is obj:
        return spec
    return None


def call_kind_of(fn: Callable[..., Any]) -> CallKind:
    if inspect.isasyncgenfunction(fn):
        return "async_generator"
    if inspect.iscoroutinefunction(fn):
        return "async"
    if inspect.isgeneratorfunction(fn):
        return "generator"
    return "function"


def params_of(fn: Callable[..., Any], *, skip_self: bool, label: str) -> tuple[Param, ...]:
    """Read a signature once into ``Param`` records (the schema comes from the type hints)."""
    try:
        hints = inspect.get_annotations(fn, eval_str=True)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        hints = inspect.get_annotations(fn)
    params = []
    for i, p in enumerate(inspect.signature(fn).parameters.values()):
        if skip_self and i == 0:
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            star = "*" if p.kind is p.VAR_POSITIONAL else "**"
            raise StageDefinitionError(
                f"stage {label} takes {star}{p.name}; altoflow wires a stage's inputs by parameter "
                f"name, so every input must be a named parameter.\n"
                f"  Instead of: def f({star}{p.name})\n  write:      def f(answer, question)"
            )
        if p.kind is p.POSITIONAL_ONLY:
            raise StageDefinitionError(
                f"stage {label} has the positional-only parameter '{p.name}'; altoflow passes "
                f"inputs by name. Remove the '/' from the signature."
            )
        params.append(Param(p.name, hints.get(p.name, Any), p.default))
    return tuple(params)


@overload
def stage(fn: F, /) -> F: ...


@overload
def stage(
    *,
    fanout: str | None = None,
    aggregate: Any = None,
    over: str | None = None,
    replicas: int = 1,
    concurrency: int | None = None,
    gpus: float = 0,
    cpus: float = 1,
    timeout: float | None = None,
    retries: int = 0,
    on_error: Literal["fail", "drop"] = "fail",
    name: str | None = None,
    output: bool | None = None,
) -> Callable[[F], F]: ...


def stage(
    fn: Any = None,
    /,
    *,
    fanout: str | None = None,
    aggregate: Any = None,
    over: str | None = None,
    replicas: int = 1,
    concurrency: int | None = None,
    gpus: float = 0,
    cpus: float = 1,
    timeout: float | None = None,
    retries: int = 0,
    on_error: Literal["fail", "drop"] = "fail",
    name: str | None = None,
    output: bool | None = None,
) -> Any:
    """Mark a function or class as a pipeline stage. Both ``@stage`` and ``@stage(...)`` work.

    The function is returned unchanged (a spec is attached to it), so it stays a plain,
    unit-testable function. See ``docs/concepts.md`` for what each argument means.
    """

    def decorate(obj: Any) -> Any:
        spec = _make_spec(
            obj,
            fanout=fanout,
            aggregate=aggregate,
            over=over,
            replicas=replicas,
            concurrency=concurrency,
            gpus=gpus,
            cpus=cpus,
            timeout=timeout,
            retries=retries,
            on_error=on_error,
            name=name,
            output=output,
        )
        setattr(obj, SPEC_ATTR, spec)
        return obj

    if fn is None:
        return decorate
    if not callable(fn):
        raise StageDefinitionError(
            f"@stage was given {fn!r}, which is not a function or class. Arguments of @stage "
            f"are keywords: write @stage(fanout='claim'), not @stage('claim')."
        )
    return decorate(fn)


def _make_spec(obj: Any, **kw: Any) -> StageSpec:
    is_class = inspect.isclass(obj)
    label = describe(obj, kw["name"])
    if is_class:
        owner = next((k for k in obj.__mro__ if k is not object and "__call__" in vars(k)), None)
        call = vars(owner)["__call__"] if owner is not None else None
        if not callable(call):
            raise StageDefinitionError(
                f"class stage {label} has no __call__ method. A class stage runs __init__ once "
                f"per replica and __call__ once per item: define `def __call__(self, ...)`."
            )
        kind = call_kind_of(call)
        params = params_of(call, skip_self=True, label=label)
        init_params = [
            p
            for p in list(inspect.signature(obj.__init__).parameters.values())[1:]
            if p.default is _MISSING and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if obj.__init__ is not object.__init__ and init_params:
            raise StageDefinitionError(
                f"class stage {label} needs __init__ arguments "
                f"({', '.join(p.name for p in init_params)}); altoflow creates the instance "
                f"itself, once per replica, with no arguments. Give them defaults or read them "
                f"from configuration inside __init__."
            )
        return_annotation = inspect.signature(call).return_annotation
    elif inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj):
        kind = call_kind_of(obj)
        params = params_of(obj, skip_self=False, label=label)
        return_annotation = inspect.signature(obj).return_annotation
    else:
        raise StageDefinitionError(
            f"@stage was applied to {obj!r}; a stage must be a function (def or async def, "
            f"plain or generator) or a class with __call__."
        )

    name = kw["name"] if kw["name"] is not None else obj.__name__
    if not isinstance(name, str) or not name.isidentifier():
        raise StageDefinitionError(
            f"stage {label}: name={name!r} is not a valid identifier; downstream stages refer to "
            f"a stage by a parameter of that name."
        )

    fanout = kw["fanout"]
    if fanout is not None:
        if not isinstance(fanout, str) or not fanout.isidentifier():
            raise StageDefinitionError(
                f"stage {label}: fanout={fanout!r} must name the new level, e.g. fanout='claim'."
            )
    aggregate = kw["aggregate"]
    if aggregate is not None:
        aggregate = resolve_aggregator(aggregate, label)
    is_generator = kind in ("generator", "async_generator")
    if fanout is not None and not is_generator and aggregate is None:
        raise StageDefinitionError(
            f"stage {label} has fanout={fanout!r} but is not a generator: each item of the new "
            f"level is one `yield`.\n  Instead of: return [a, b]\n  write:      "
            f"yield a; yield b   (or: yield from items)"
        )
    if is_generator and fanout is None:
        raise StageDefinitionError(
            f"stage {label} is a generator but has no fanout=...: name the level its yields "
            f"open, e.g. @stage(fanout='claim'). (A stage that returns one value per item must "
            f"`return` it, not `yield` it.)"
        )
    if is_generator and aggregate is not None:
        raise StageDefinitionError(
            f"stage {label} is a generator and an aggregate: an aggregate stage returns one value "
            f"per input item, and the operator's result is what fans out. Make the function "
            f"`return` the value, keep aggregate=... and fanout=...."
        )
    if kw["over"] is not None and aggregate is None:
        raise StageDefinitionError(
            f"stage {label} has over={kw['over']!r} but no aggregate=...; `over` names the level "
            f"an aggregate folds away. Add an operator, e.g. aggregate=ops.collect."
        )
    if not isinstance(kw["replicas"], int) or kw["replicas"] < 1:
        raise StageDefinitionError(f"stage {label}: replicas={kw['replicas']!r} must be an int >= 1.")
    concurrency = kw["concurrency"]
    if concurrency is None:
        concurrency = 64 if kind in ("async", "async_generator") else 1
    if not isinstance(concurrency, int) or concurrency < 1:
        raise StageDefinitionError(f"stage {label}: concurrency={concurrency!r} must be an int >= 1.")
    if kw["on_error"] not in ("fail", "drop"):
        raise StageDefinitionError(
            f"stage {label}: on_error={kw['on_error']!r}; it is 'fail' (end the request with an "
            f"error) or 'drop' (drop the item)."
        )
    if not isinstance(kw["retries"], int) or kw["retries"] < 0:
        raise StageDefinitionError(f"stage {label}: retries={kw['retries']!r} must be an int >= 0.")
    timeout = kw["timeout"]
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise StageDefinitionError(f"stage {label}: timeout={timeout!r} must be seconds > 0 or None.")
    for res in ("gpus", "cpus"):
        if not isinstance(kw[res], (int, float)) or kw[res] < 0:
            raise StageDefinitionError(f"stage {label}: {res}={kw[res]!r} must be a number >= 0.")
    if kw["output"] not in (None, True, False):
        raise StageDefinitionError(f"stage {label}: output={kw['output']!r} must be True, False or None.")

    for p in params:
        if p.name == name:
            raise StageDefinitionError(
                f"stage {label} has a parameter named '{p.name}', its own name: a stage cannot "
                f"consume its own output. Rename the parameter (or the stage with name=...)."
            )

    return StageSpec(
        obj=obj,
        name=name,
        params=params,
        call_kind=kind,
        is_class=is_class,
        fanout=fanout,
        aggregate=aggregate,
        over=kw["over"],
        replicas=kw["replicas"],
        concurrency=concurrency,
        gpus=float(kw["gpus"]),
        cpus=float(kw["cpus"]),
        timeout=float(timeout) if timeout is not None else None,
        retries=kw["retries"],
        on_error=kw["on_error"],
        output=kw["output"],
        return_annotation=return_annotation,
    )
