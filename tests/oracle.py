"""A deliberately naive evaluator of altoflow's semantics, for checking the real executors.

It shares nothing with altoflow's runtime: it evaluates one stage at a time, in topological
order, over fully materialised item sets (no streaming, no progress tracking), straight from
the rules in docs/architecture.md ("What the compiler infers", "Semantics every runtime keeps").
Slow and obviously right is the point.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import altoflow as af
from altoflow.compiler import load_target

Anc = tuple[int, ...]


@dataclass
class OracleResult:
    outputs: dict[str, dict[Anc, Any]]  # output stage -> ancestry indices -> value
    errors: set[tuple[str, tuple[tuple[str, int], ...]]] = field(default_factory=set)
    calls: list[tuple[str, Anc]] = field(default_factory=list)  # successful invocations


async def _call(fn: Any, kwargs: dict[str, Any]) -> Any:
    out = fn(**kwargs)
    if inspect.isawaitable(out):
        out = await out
    return out


async def _collect(fn: Any, kwargs: dict[str, Any], out: list[Any]) -> None:
    gen = fn(**kwargs)
    if inspect.isasyncgen(gen):
        async for v in gen:
            out.append(v)
    else:
        for v in gen:
            out.append(v)


async def evaluate(target: Any, **fields: Any) -> OracleResult:
    compiled = load_target(target).compiled
    plan = compiled.plan
    request = compiled.validate_request(fields)
    items: dict[str, dict[Anc, Any]] = {}
    entered: dict[str, set[Anc]] = {}  # opener stage -> ancestries whose groups exist
    result = OracleResult(outputs={})
    instances = {n: s.obj() for n, s in compiled.specs.items() if s.is_class}

    def fail(sp: Any, levels: list[str], anc: Anc) -> None:
        if sp.on_error == "fail":
            result.errors.add((sp.name, tuple(zip(levels, anc))))

    for sp in plan.stages:
        spec = compiled.specs[sp.name]
        fn = instances[sp.name].__call__ if spec.is_class else spec.obj
        # Every complete input tuple, by ancestry: zip the deepest inputs, broadcast the rest.
        if not sp.inputs:
            tuples = {(): {}}
        else:
            keys = set.intersection(*(set(items[d]) for d in sp.drives))
            tuples = {}
            for anc in keys:
                args = {d: items[d][anc] for d in sp.drives}
                ok = True
                for b in sp.broadcasts:
                    k = anc[: len(plan.stage(b).levels_out)]
                    if k not in items[b]:
                        ok = False
                        break
                    args[b] = items[b][k]
                if ok:
                    tuples[anc] = args
        out: dict[Anc, Any] = {}
        per_item: dict[Anc, Any] = {}
        for anc in sorted(tuples):
            kwargs = {**{f: request[f] for f in sp.fields}, **tuples[anc]}
            if spec.is_generator:
                yielded: list[Any] = []
                error = None
                for _ in range(sp.retries + 1):
                    yielded = []
                    try:
                        await _collect(fn, kwargs, yielded)
                        error = None
                        break
                    except Exception as exc:
                        error = exc
                        if [v for v in yielded if v is not af.DROP]:
                            break
                kept = [v for v in yielded if v is not af.DROP]
                for i, v in enumerate(kept):
                    out[anc + (i,)] = v
                if error is None:
                    entered.setdefault(sp.name, set()).add(anc)
                    result.calls.append((sp.name, anc))
                else:
                    fail(sp, sp.levels_in, anc)
                continue
            value, error = None, None
            for _ in range(sp.retries + 1):
                try:
                    value = await _call(fn, kwargs)
                    error = None
                    break
                except Exception as exc:
                    error = exc
            if error is not None:
                fail(sp, sp.levels_in, anc)
                continue
            result.calls.append((sp.name, anc))
            if value is af.DROP:
                continue
            per_item[anc] = value
        if spec.aggregate is not None:
            op = spec.aggregate
            g = len(sp.route_key)
            opener = plan.levels[sp.over]
            for prefix in sorted(entered.get(opener, ())):
                state = op.create()
                for anc in sorted(a for a in per_item if a[:g] == prefix):
                    state = op.add(state, per_item[anc], anc[g:])
                try:
                    value = op.result(state)
                    if sp.fanout:
                        value = list(value)
                except Exception:
                    fail(sp, sp.route_key, prefix)
                    continue
                if sp.fanout:
                    for i, v in enumerate(value):
                        out[prefix + (i,)] = v
                    entered.setdefault(sp.name, set()).add(prefix)
                else:
                    out[prefix] = value
        elif not spec.is_generator:
            out = per_item
        items[sp.name] = out
        if sp.output:
            result.outputs[sp.name] = out
    return result
