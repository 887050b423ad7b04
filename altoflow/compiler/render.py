"""Pictures of a plan: text for a terminal, JSON for machines, Mermaid and DOT for documents,
SVG for notebooks (``Pipeline._repr_svg_``) and pages, drawn here with no graph library."""

from __future__ import annotations

import json
import shutil
from typing import Any
from xml.sax.saxutils import escape as _xml

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


def terminal_width() -> int:
    """The terminal's columns (``COLUMNS`` when set; 80 when not a terminal), at least 40."""
    return max(40, shutil.get_terminal_size((80, 24)).columns)


def to_text(plan: Plan, width: int = 80) -> str:
    """One block per stage, in topological order, each input edge labelled with its level stack,
    and a note under a request field named almost like a stage (a likely misspelt input).
    Lines longer than ``width`` are wrapped at a space.

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


# SVG geometry, in pixels: a monospace character, a text line, the gaps between boxes and rows.
_CHAR, _LINE, _PAD, _GAP, _ROW_GAP = 7.2, 16, 8, 32, 44


def to_svg(plan: Plan) -> str:
    """The graph as an SVG image: one box per stage (name, kind, key, replicas), in rows by
    depth from the request down, with an arrow per input labelled with its level stack (dashed
    for a broadcast input). A keyed aggregate has a double border, an output stage round
    corners."""
    depth: dict[str, int] = {}
    for s in plan.stages:  # in topological order
        depth[s.name] = 1 + max((depth[i] for i in s.inputs), default=0)
    fields = sorted({f for s in plan.stages for f in s.fields})
    boxes: dict[str, tuple[list[str], Any]] = {}
    if fields:
        boxes["request"] = (["request", ", ".join(fields)], None)
    for s in plan.stages:
        lines = [s.name, _what(s)]
        if s.route_key is not None:
            lines.append(_key(s))
        if s.replicas > 1:
            lines.append(f"x{s.replicas}")
        boxes[s.name] = (lines, s)
    rows: dict[int, list[str]] = {}
    for name in boxes:
        rows.setdefault(depth.get(name, 0), []).append(name)
    size = {name: (max(len(line) for line in lines) * _CHAR + 2 * _PAD, len(lines) * _LINE + _PAD)
            for name, (lines, _) in boxes.items()}
    row_width = {d: sum(size[n][0] for n in names) + _GAP * (len(names) - 1) for d, names in rows.items()}
    width = max(row_width.values()) + 2 * _GAP
    place: dict[str, tuple[float, float]] = {}
    y = float(_GAP / 2)
    for d in sorted(rows):
        x = (width - row_width[d]) / 2
        for name in rows[d]:
            place[name] = (x, y)
            x += size[name][0] + _GAP
        y += max(size[n][1] for n in rows[d]) + _ROW_GAP
    height = y - _ROW_GAP + _GAP / 2
    level = {name: depth.get(name, 0) for name in boxes}
    edges = [("request", s.name, "", False) for s in plan.stages if s.fields and not s.inputs and fields]
    edges += [(i, s.name, stack(plan.stage(i).levels_out), i in s.broadcasts)
              for s in plan.stages for i in s.inputs]
    # An edge that skips rows goes round the right of the boxes, each one further out.
    right = max(place[n][0] + size[n][0] for n in boxes)
    bows = {}
    for src, dst, label, broadcast in edges:
        if level[dst] - level[src] > 1:
            bows[src, dst] = right + _GAP * (1 + len(bows))
    if bows:
        longest = max(len(e[2]) + 10 for e in edges)
        width = max(width, max(bows.values()) + longest * _CHAR * 0.9 + _PAD)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="monospace" font-size="12">',
           f"<title>{_xml(plan.name)}</title>",
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
           'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>']

    def anchor(name: str, bottom: bool) -> tuple[float, float]:
        x, y = place[name]
        return x + size[name][0] / 2, y + (size[name][1] if bottom else 0)

    for src, dst, label, broadcast in edges:
        (x1, y1), (x2, y2) = anchor(src, True), anchor(dst, False)
        dash = ' stroke-dasharray="5 3"' if broadcast else ""
        bow = bows.get((src, dst))
        if bow is None:
            path, lx, ly = f"M {x1:.1f} {y1:.1f} L {x2:.1f} {y2:.1f}", (x1 + x2) / 2 + 4, (y1 + y2) / 2 + 4
        else:  # from the right side of one box to the right side of the other
            x1, y1 = place[src][0] + size[src][0], place[src][1] + size[src][1] / 2
            x2, y2 = place[dst][0] + size[dst][0], place[dst][1] + size[dst][1] / 2
            path = f"M {x1:.1f} {y1:.1f} C {bow:.1f} {y1:.1f} {bow:.1f} {y2:.1f} {x2:.1f} {y2:.1f}"
            lx, ly = 0.75 * bow + 0.125 * (x1 + x2) + 4, (y1 + y2) / 2 + 4
        out.append(f'<path class="edge" d="{path}" fill="none" stroke="#555"{dash} '
                   f'marker-end="url(#arrow)"/>')
        if label:
            text = label + (" broadcast" if broadcast else "")
            out.append(f'<text x="{lx:.1f}" y="{ly:.1f}" fill="#555" font-size="11">{_xml(text)}</text>')
    for name, (lines, s) in boxes.items():
        x, y = place[name]
        w, h = size[name]
        rx = 10 if s is not None and s.output else 3
        fill = "#eef3fb" if s is not None else "#f4f4f4"
        out.append(f'<g class="stage" id="{_xml(name)}">' if s is not None else '<g class="request">')
        out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="{rx}" '
                   f'fill="{fill}" stroke="#335"/>')
        if s is not None and s.route_key is not None:
            out.append(f'<rect x="{x + 3:.1f}" y="{y + 3:.1f}" width="{w - 6:.1f}" height="{h - 6:.1f}" '
                       f'rx="{rx}" fill="none" stroke="#335"/>')
        for k, line in enumerate(lines):
            weight = ' font-weight="bold"' if k == 0 else ""
            out.append(f'<text x="{x + w / 2:.1f}" y="{y + _PAD / 2 + _LINE * (k + 0.8):.1f}" '
                       f'text-anchor="middle"{weight}>{_xml(line)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


FORMATS = {"text": to_text, "json": to_json, "mermaid": to_mermaid, "dot": to_dot, "svg": to_svg}
