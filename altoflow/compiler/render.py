"""Pictures of a plan: text for a terminal, JSON for machines, Mermaid and DOT for documents."""

from __future__ import annotations

import json
from typing import Any

from altoflow.compiler.plan import Plan, StagePlan


def stack(levels: list[str]) -> str:
    return "[" + "/".join(levels) + "]"


def _what(s: StagePlan) -> str:
    if s.kind == "aggregate":
        text = f"aggregate {s.operator} over {s.over}"
        return text + (f", fanout +{s.fanout}" if s.fanout else "")
    if s.kind == "fanout":
        return f"fanout +{s.fanout}"
    return s.kind


def _key(s: StagePlan) -> str:
    if s.route_key is None:
        return "balanced"
    return "key (request" + "".join(f", {l}" for l in s.route_key) + ")"


def to_text(plan: Plan, width: int = 80) -> str:
    """One block per stage, in topological order, each input edge labelled with its level stack,
    and a note under a request field named almost like a stage (a likely misspelt input).

    ::

        ● evidence  aggregate ops.topk(3) over claim · key (request) · x1 · output
          ← claims [claim]  broadcast
          ← bm25   [claim/query]
    """
    levels = " > ".join(plan.levels) or "none"
    lines = _wrap(f"pipeline {plan.name}: {len(plan.stages)} stages, levels {levels}", width, "    ")
    fields = sorted({f for s in plan.stages for f in s.fields})
    if fields:
        lines.extend(_wrap(f"request fields: {', '.join(fields)}", width, "    "))
    lines.append("")
    for s in plan.stages:
        tags = [_what(s), _key(s), f"x{s.replicas}"]
        if s.output:
            tags.append("output")
        head = f"● {s.name}  " + " · ".join(tags)
        lines.extend(_wrap(head, width, indent="    "))
        width_in = max((len(i) for i in s.inputs), default=0)
        for i in s.inputs:
            edge_levels = plan.stage(i).levels_out
            role = "  broadcast" if i in s.broadcasts else ("  zip" if len(s.drives) > 1 else "")
            lines.extend(_wrap(f"  ← {i:<{width_in}} {stack(edge_levels)}{role}", width, "      "))
        if s.fields:
            lines.extend(_wrap(f"  ← request: {', '.join(s.fields)}", width, "      "))
        for field, near in s.near_stages.items():
            note = f"  ! '{field}' is no stage, so it is a request field: did you mean `{near}`?"
            lines.extend(_wrap(note, width, "      "))
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int, indent: str) -> list[str]:
    out: list[str] = []
    while len(text) > width:
        cut = text.rfind(" ", 0, width)
        if cut <= len(indent):
            break
        out.append(text[:cut])
        text = indent + text[cut + 1 :]
    out.append(text)
    return out


def to_json(plan: Plan) -> str:
    return json.dumps(plan.contract_json(), indent=2) + "\n"


def _label(s: StagePlan, sep: str, escape: Any) -> str:
    parts = [s.name, _what(s)]
    if s.route_key is not None:
        parts.append(_key(s))
    if s.replicas > 1:
        parts.append(f"x{s.replicas}")
    return sep.join(escape(p) for p in parts)


def _mermaid_text(text: str) -> str:
    # Mermaid reads entity codes (#quot;) inside quoted labels; quotes and brackets would end them.
    for ch, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;"), ("\n", " ")):
        text = text.replace(ch, code)
    return text


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def to_mermaid(plan: Plan) -> str:
    lines = ["flowchart TD"]
    fields = sorted({f for s in plan.stages for f in s.fields})
    if fields:
        lines.append(f'    request(["request: {", ".join(fields)}"])')
    for s in plan.stages:
        shape = ('[["', '"]]') if s.route_key is not None else (('(["', '"])') if s.output else ('["', '"]'))
        lines.append(f"    {s.name}{shape[0]}{_label(s, '<br/>', _mermaid_text)}{shape[1]}")
    for s in plan.stages:
        if s.fields and not s.inputs:
            lines.append(f"    request --> {s.name}")
        for i in s.inputs:
            label = stack(plan.stage(i).levels_out)
            if i in s.broadcasts:
                label += " broadcast"
            lines.append(f'    {i} -->|"{label}"| {s.name}')
    return "\n".join(lines) + "\n"


def to_dot(plan: Plan) -> str:
    lines = [f'digraph "{plan.name}" {{', "  rankdir=TB;", '  node [shape=box, fontname="Helvetica"];']
    for s in plan.stages:
        attrs = [f'label="{_label(s, chr(92) + "n", _dot_text)}"']
        if s.route_key is not None:
            attrs.append("peripheries=2")
        if s.output:
            attrs.append("style=rounded")
        lines.append(f'  "{s.name}" [{", ".join(attrs)}];')
    for s in plan.stages:
        for i in s.inputs:
            label = stack(plan.stage(i).levels_out)
            style = ", style=dashed" if i in s.broadcasts else ""
            lines.append(f'  "{i}" -> "{s.name}" [label="{label}"{style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


FORMATS = {"text": to_text, "json": to_json, "mermaid": to_mermaid, "dot": to_dot}
