"""``@stage``: record what a function is, validate what can be seen at once, return it unchanged.

The keywords of ``@stage(...)`` are a ``StageOptions``; applied to a function or class they are
checked one by one, then against the function (its call kind, its parameters), and recorded
as the ``StageSpec`` the compiler reads.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, TypeVar, overload

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
    # Other resources a replica takes on a Ray cluster (``altoflow serve --ray``), sorted by name.
    resources: tuple[tuple[str, float], ...] = ()
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


@dataclass(frozen=True)
class StageOptions:
    """The keyword arguments of ``@stage(...)``, one field each, as the user wrote them.

    ``checked`` validates every field on its own and normalises it; how the fields fit the
    function (a fanout needs a generator, ...) is checked when the spec is made, where the
    function is known.
    """

    fanout: str | None = None
    aggregate: Any = None  # an operator class or instance; ``checked`` makes it an instance
    over: str | None = None
    replicas: int = 1
    concurrency: int | None = None  # None: 1 for a sync function, 64 for an async one
    gpus: float = 0
    cpus: float = 1
    resources: Any = None  # a mapping of resource name -> amount; ``checked`` makes it sorted pairs
    timeout: float | None = None
    retries: int = 0
    on_error: Literal["fail", "drop"] = "fail"
    name: str | None = None
    output: bool | None = None

    def checked(self, label: str) -> "StageOptions":
        """These options, each field validated and normalised (an operator class becomes an
        instance, numbers become floats); ``StageDefinitionError`` names ``label`` and the fix."""
        return StageOptions(
            fanout=_check_fanout(self.fanout, label),
            aggregate=resolve_aggregator(self.aggregate, label) if self.aggregate is not None else None,
            over=_check_over(self.over, label),
            replicas=_check_count("replicas", self.replicas, 1, label),
            concurrency=(None if self.concurrency is None
                         else _check_count("concurrency", self.concurrency, 1, label)),
            gpus=_check_amount("gpus", self.gpus, label),
            cpus=_check_amount("cpus", self.cpus, label),
            resources=_check_resources(self.resources, label),
            timeout=_check_timeout(self.timeout, label),
            retries=_check_count("retries", self.retries, 0, label),
            on_error=_check_on_error(self.on_error, label),
            name=None if self.name is None else _check_name(self.name, label),
            output=_check_output(self.output, label),
        )


def _check_fanout(fanout: Any, label: str) -> str | None:
    if fanout is not None and (not isinstance(fanout, str) or not fanout.isidentifier()):
        raise StageDefinitionError(
            f"stage {label}: fanout={fanout!r} must name the new level, e.g. fanout='claim'."
        )
    return fanout


def _check_over(over: Any, label: str) -> str | None:
    if over is not None and (not isinstance(over, str) or not over.isidentifier()):
        raise StageDefinitionError(
            f"stage {label}: over={over!r} must name the level the aggregate folds away, e.g. "
            f"over='claim'."
        )
    return over


def _check_count(option: str, value: Any, least: int, label: str) -> int:
    if not isinstance(value, int) or value < least:
        raise StageDefinitionError(f"stage {label}: {option}={value!r} must be an int >= {least}.")
    return value


def _check_amount(option: str, value: Any, label: str) -> float:
    if not isinstance(value, (int, float)) or value < 0:
        raise StageDefinitionError(f"stage {label}: {option}={value!r} must be a number >= 0.")
    return float(value)


def _check_resources(resources: Any, label: str) -> tuple[tuple[str, float], ...]:
    if resources is None:
        return ()
    example = "resources={'retriever_node': 1}"
    if not isinstance(resources, Mapping):
        raise StageDefinitionError(
            f"stage {label}: resources={resources!r} must map resource names to amounts, e.g. "
            f"{example}.")
    checked = []
    for name, amount in resources.items():
        if not isinstance(name, str) or not name.strip():
            raise StageDefinitionError(
                f"stage {label}: resources has the key {name!r}; a resource is named by a "
                f"non-empty string, e.g. {example}.")
        if name in ("CPU", "GPU"):
            option = name.lower() + "s"
            raise StageDefinitionError(
                f"stage {label}: resources names {name!r}; give CPUs and GPUs with "
                f"{option}=..., not in resources.\n  Instead of: resources={{{name!r}: 1}}\n  "
                f"write:      {option}=1")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount >= 0:
            raise StageDefinitionError(
                f"stage {label}: resources[{name!r}]={amount!r} must be a number >= 0.")
        checked.append((name, float(amount)))
    return tuple(sorted(checked))


def _check_timeout(timeout: Any, label: str) -> float | None:
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise StageDefinitionError(f"stage {label}: timeout={timeout!r} must be seconds > 0 or None.")
    return float(timeout)


def _check_on_error(on_error: Any, label: str) -> Literal["fail", "drop"]:
    if on_error not in ("fail", "drop"):
        raise StageDefinitionError(
            f"stage {label}: on_error={on_error!r}; it is 'fail' (end the request with an "
            f"error) or 'drop' (drop the item)."
        )
    return on_error


def _check_name(name: Any, label: str) -> str:
    if not isinstance(name, str) or not name.isidentifier():
        raise StageDefinitionError(
            f"stage {label}: name={name!r} is not a valid identifier; downstream stages refer to "
            f"a stage by a parameter of that name."
        )
    return name


def _check_output(output: Any, label: str) -> bool | None:
    if output is not None and not isinstance(output, bool):
        raise StageDefinitionError(f"stage {label}: output={output!r} must be True, False or None.")
    return output


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
    resources: Mapping[str, float] | None = None,
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
    resources: Mapping[str, float] | None = None,
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
    options = StageOptions(
        fanout=fanout, aggregate=aggregate, over=over, replicas=replicas,
        concurrency=concurrency, gpus=gpus, cpus=cpus, resources=resources, timeout=timeout,
        retries=retries, on_error=on_error, name=name, output=output,
    )

    def decorate(obj: Any) -> Any:
        setattr(obj, SPEC_ATTR, _make_spec(obj, options))
        return obj

    if fn is None:
        return decorate
    if not callable(fn):
        raise StageDefinitionError(
            f"@stage was given {fn!r}, which is not a function or class. Arguments of @stage "
            f"are keywords: write @stage(fanout='claim'), not @stage('claim')."
        )
    return decorate(fn)


def _make_spec(obj: Any, options: StageOptions) -> StageSpec:
    """The spec of ``obj`` under ``options``: read the callable, check each option, check that
    they fit the callable, resolve the defaults."""
    label = describe(obj, options.name)
    shape = _read_callable(obj, label)
    checked = options.checked(label)
    name = checked.name if checked.name is not None else _check_name(obj.__name__, label)
    _check_fits(checked, shape.call_kind, label)
    _check_no_self_input(shape.params, name, label)
    concurrency = checked.concurrency
    if concurrency is None:
        concurrency = 64 if shape.call_kind in ("async", "async_generator") else 1
    return StageSpec(
        obj=obj,
        name=name,
        params=shape.params,
        call_kind=shape.call_kind,
        is_class=shape.is_class,
        fanout=checked.fanout,
        aggregate=checked.aggregate,
        over=checked.over,
        replicas=checked.replicas,
        concurrency=concurrency,
        gpus=checked.gpus,
        cpus=checked.cpus,
        resources=checked.resources,
        timeout=checked.timeout,
        retries=checked.retries,
        on_error=checked.on_error,
        output=checked.output,
        return_annotation=shape.return_annotation,
    )


@dataclass(frozen=True)
class _Callable:
    """What the signature of a stage's function (or its class's ``__call__``) says."""

    call_kind: CallKind
    params: tuple[Param, ...]
    return_annotation: Any
    is_class: bool


def _return_hint(fn: Callable[..., Any]) -> Any:
    """The return annotation, evaluated where it is a string (``from __future__ import
    annotations``), so that the runtime can decode a stage's outputs into the annotated class."""
    try:
        return inspect.get_annotations(fn, eval_str=True).get("return", inspect.Signature.empty)
    except Exception:  # noqa: BLE001  # a forward reference not defined yet: keep the string
        return inspect.signature(fn).return_annotation


def _read_callable(obj: Any, label: str) -> _Callable:
    """The call kind, parameters and return annotation of a function, or of a class's
    ``__call__``; a class must be creatable with no arguments."""
    if inspect.isclass(obj):
        owner = next((k for k in obj.__mro__ if k is not object and "__call__" in vars(k)), None)
        call = vars(owner)["__call__"] if owner is not None else None
        if not callable(call):
            raise StageDefinitionError(
                f"class stage {label} has no __call__ method. A class stage runs __init__ once "
                f"per replica and __call__ once per item: define `def __call__(self, ...)`."
            )
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
        return _Callable(call_kind_of(call), params, _return_hint(call), True)
    if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj):
        params = params_of(obj, skip_self=False, label=label)
        return _Callable(call_kind_of(obj), params, _return_hint(obj), False)
    raise StageDefinitionError(
        f"@stage was applied to {obj!r}; a stage must be a function (def or async def, "
        f"plain or generator) or a class with __call__."
    )


def _check_fits(options: StageOptions, kind: CallKind, label: str) -> None:
    """The options that depend on each other and on the call kind: a fanout is a generator
    (unless an aggregate's result fans out), a generator opens a level, ``over`` needs an
    aggregate."""
    fanout, aggregate = options.fanout, options.aggregate
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
    if options.over is not None and aggregate is None:
        raise StageDefinitionError(
            f"stage {label} has over={options.over!r} but no aggregate=...; `over` names the "
            f"level an aggregate folds away. Add an operator, e.g. aggregate=ops.collect."
        )


def _check_no_self_input(params: tuple[Param, ...], name: str, label: str) -> None:
    for p in params:
        if p.name == name:
            raise StageDefinitionError(
                f"stage {label} has a parameter named '{p.name}', its own name: a stage cannot "
                f"consume its own output. Rename the parameter (or the stage with name=...)."
            )
