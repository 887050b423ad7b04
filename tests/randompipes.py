"""Random pipelines for property tests: random DAGs of map, fan-out and aggregate stages.

A ``StageDef`` is plain data (so Hypothesis can shrink it); ``build`` turns a list of them into
fresh ``@stage`` functions, with real parameter names, every time it is called, so that each
evaluator gets its own flaky-call memory. Values are ints mixed from the inputs; drops, errors
and fan-out sizes are decided by the value, so every evaluator sees the same ones.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

import altoflow as af
from altoflow import ops

OPS: dict[str, Any] = {
    "sum": lambda: ops.sum,
    "count": lambda: ops.count(),
    "count_odd": lambda: ops.count(pred=lambda v: num(v) % 2 == 1),
    "min": lambda: ops.min,
    "max": lambda: ops.max,
    "mean": lambda: ops.mean(),
    "collect": lambda: ops.collect,
    "concat": lambda: ops.concat(sep="|"),
    "topk": lambda: ops.topk(2, key=lambda v: num(v) % 5),
    "filter": lambda: ops.filter(lambda v: num(v) % 3 == 0),
    "first": lambda: ops.first(),
    "first_even": lambda: ops.first(lambda v: num(v) % 2 == 0),
    "any": lambda: ops.any(lambda v: num(v) % 7 == 0),
    "all": lambda: ops.all(lambda v: num(v) % 5 != 0),
    "reduce": lambda: ops.reduce(lambda a, v: (a * 31 + num(v)) % 100003, 1),
}


def num(x: Any) -> int:
    """A deterministic int from any value an operator can produce."""
    if x is None:
        return 0
    if isinstance(x, bool):
        return int(x) + 1
    if isinstance(x, int):
        return x
    if isinstance(x, float):
        return int(x * 1000) % 100003
    if isinstance(x, str):
        return sum(ord(c) for c in x) % 100003
    if isinstance(x, (list, tuple)):
        return sum((i + 1) * num(v) for i, v in enumerate(x)) % 100003
    raise TypeError(type(x))


@dataclass(frozen=True)
class StageDef:
    name: str
    inputs: tuple[str, ...]
    kind: str  # map | fanout | agg | aggfan
    level: str | None = None  # the level a fan-out opens
    over: str | None = None
    op: str = "sum"
    mode: str = "sync"  # sync | async
    delay: float = 0.0
    on_error: str = "drop"
    retries: int = 0
    drop_mod: int = 0
    err_mod: int = 0
    flaky: bool = False
    fan_n: int = 3
    gen_err_at: int = -1
    concurrency: int | None = None
    replicas: int = 1
    output: bool | None = None
    seed: int = 1
    as_str: bool = False  # return str values (for ops.concat)


def _value(d: StageDef, args: tuple[Any, ...], x: int) -> int:
    return (d.seed * 7919 + x * 13 + sum((i + 1) * num(a) for i, a in enumerate(args))) % 10007


def build(defs: list[StageDef], calls: "Counter | None" = None) -> af.Pipeline:
    """Fresh stage functions for ``defs``; ``calls`` counts each successful invocation."""
    fns = []
    for d in defs:
        seen: set[int] = set()
        params = list(d.inputs) + ["x"]

        def body(*args: Any, d: StageDef = d, seen: set[int] = seen) -> Any:
            v = _value(d, args[:-1], args[-1])
            if d.flaky and v not in seen:
                seen.add(v)
                raise RuntimeError(f"flaky {d.name} {v}")
            if d.err_mod and v % d.err_mod == 1 and d.gen_err_at < 0:
                raise ValueError(f"{d.name} fails on {v}")
            if calls is not None:
                calls[(d.name, v)] += 1
            if d.drop_mod and v % d.drop_mod == 0 and d.kind != "fanout":
                return af.DROP
            return v

        def out(v: int, d: StageDef = d) -> Any:
            return f"s{v}" if d.as_str else v

        def items(v: int, d: StageDef = d) -> list[Any]:
            n = v % d.fan_n
            vals = []
            for i in range(n):
                if d.err_mod and d.gen_err_at == i and v % d.err_mod == 1:
                    vals.append(_Raise(f"{d.name} fails at item {i} of {v}"))
                    break
                vals.append(af.DROP if d.drop_mod and (v + i) % d.drop_mod == 0 else (v * 13 + i) % 10007)
            return vals

        ns: dict[str, Any] = {"body": body, "out": out, "items": items, "asyncio": asyncio,
                              "time": time, "DROP": af.DROP, "_Raise": _Raise,
                              "__name__": "randompipes_generated"}
        arglist = ", ".join(params)
        pause = d.delay
        if d.kind == "fanout":
            if d.mode == "async":
                src = (f"async def {d.name}({arglist}):\n"
                       f"    v = body({arglist})\n"
                       f"    for it in items(v):\n"
                       f"        await asyncio.sleep({pause} * (v % 3))\n"
                       f"        if isinstance(it, _Raise): raise ValueError(it.msg)\n"
                       f"        yield it\n")
            else:
                src = (f"def {d.name}({arglist}):\n"
                       f"    v = body({arglist})\n"
                       f"    for it in items(v):\n"
                       f"        time.sleep({pause} * (v % 2))\n"
                       f"        if isinstance(it, _Raise): raise ValueError(it.msg)\n"
                       f"        yield it\n")
        else:
            if d.mode == "async":
                src = (f"async def {d.name}({arglist}):\n"
                       f"    v = body({arglist})\n"
                       f"    if v is DROP: return v\n"
                       f"    await asyncio.sleep({pause} * (v % 3))\n"
                       f"    return out(v)\n")
            else:
                src = (f"def {d.name}({arglist}):\n"
                       f"    v = body({arglist})\n"
                       f"    if v is DROP: return v\n"
                       f"    time.sleep({pause} * (v % 2))\n"
                       f"    return out(v)\n")
        exec(compile(src, f"<random stage {d.name}>", "exec"), ns)
        fn = ns[d.name]
        kw: dict[str, Any] = dict(on_error=d.on_error, retries=d.retries, output=d.output,
                                  replicas=d.replicas)
        if d.concurrency is not None:
            kw["concurrency"] = d.concurrency
        if d.kind == "fanout":
            kw["fanout"] = d.level
        if d.kind in ("agg", "aggfan"):
            kw["aggregate"] = OPS[d.op]()
            kw["over"] = d.over
        if d.kind == "aggfan":
            kw["fanout"] = d.level
        fns.append(af.stage(**kw)(fn))
    return af.Pipeline(fns, name="random")


class _Raise:
    def __init__(self, msg: str) -> None:
        self.msg = msg


@st.composite
def pipelines(draw: Any, max_stages: int = 7, errors: bool = True) -> tuple[list[StageDef], dict[str, list[str]]]:
    """A random valid pipeline, and the level stack of each stage's output (computed here)."""
    n = draw(st.integers(2, max_stages))
    defs: list[StageDef] = []
    stacks: dict[str, list[str]] = {}
    level_count = 0
    for i in range(n):
        name = f"s{i}"
        existing = list(stacks)
        if not existing or draw(st.integers(0, 9)) == 0:
            inputs: list[str] = []
            stack_in: list[str] = []
        else:
            driver = draw(st.sampled_from(existing))
            stack_in = stacks[driver]
            inputs = [driver]
            # Extra inputs whose stack is a prefix of the driver's: broadcast or zip partners.
            compatible = [e for e in existing if e != driver and stacks[e] == stack_in[: len(stacks[e])]]
            if compatible and draw(st.booleans()):
                extra = draw(st.lists(st.sampled_from(compatible), max_size=2, unique=True))
                inputs += extra
        choices = ["map", "fanout"] + (["agg", "aggfan"] if stack_in else [])
        kind = draw(st.sampled_from(choices))
        level = over = None
        if kind in ("fanout", "aggfan"):
            level = f"L{level_count}"
            level_count += 1
        if kind in ("agg", "aggfan"):
            over = draw(st.sampled_from(stack_in))
            out_stack = stack_in[: stack_in.index(over)] + ([level] if level else [])
        elif kind == "fanout":
            out_stack = stack_in + [level]
        else:
            out_stack = list(stack_in)
        op = draw(st.sampled_from(sorted(OPS))) if kind in ("agg", "aggfan") else "sum"
        if kind == "aggfan" and op not in ("collect", "topk", "filter"):
            op = draw(st.sampled_from(["collect", "topk", "filter"]))
        on_error = draw(st.sampled_from(["drop", "fail"])) if errors else "drop"
        retries = draw(st.integers(0, 1))
        err_mod = draw(st.sampled_from([0, 0, 5, 11])) if errors else 0
        defs.append(
            StageDef(
                name=name,
                inputs=tuple(inputs),
                kind=kind,
                level=level,
                over=over,
                op=op,
                mode=draw(st.sampled_from(["sync", "async"])),
                delay=draw(st.sampled_from([0.0, 0.0, 0.0005, 0.002])),
                on_error=on_error,
                retries=retries,
                drop_mod=draw(st.sampled_from([0, 0, 4, 7])),
                err_mod=err_mod,
                flaky=errors and retries > 0 and draw(st.booleans()),
                fan_n=draw(st.integers(1, 4)),
                gen_err_at=draw(st.sampled_from([-1, 0, 1])) if kind == "fanout" and err_mod else -1,
                concurrency=draw(st.sampled_from([None, 1, 3])),
                replicas=draw(st.integers(1, 3)),
                output=draw(st.sampled_from([None, None, True])),
                seed=draw(st.integers(1, 1000)),
                as_str=False,
            )
        )
        stacks[name] = out_stack
    # ops.concat joins strings: a concat stage returns str from each of its invocations.
    defs = [StageDef(**{**d.__dict__, "as_str": True}) if d.op == "concat" else d for d in defs]
    return defs, stacks
