"""Drawing request timelines as the ALTO paper's Figure 2: one row per stage, one bar per item.

Input: the JSON documents of ``altoflow.runtime.timeline.timeline_json`` (what ``GET
/v1/requests/{id}/timeline`` returns), each with a label. Rows are the stages in topological
order; in a row, each invocation is a bar from its start to its end, and invocations that
overlap in time (replicas, concurrency) are stacked in lanes so that each one stays visible.
Each output the invocation produced is a tick on its bar, so a fan-out's items can be seen
leaving it, and the next stage's bars starting, while it still runs (streaming) or only after
it ended (``--barrier``). An aggregate group's flush (the group's result being emitted) is a
darker bar in the aggregate's row.

HTML (``draw_html``) is one self-contained file: inline SVG, no script, no CDN. PNG
(``draw_png``) needs matplotlib, which altoflow does not depend on.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

MAX_LANES = 16  # lanes per row; invocations past them share the last lane
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")


class TimelineDrawError(Exception):
    """A timeline cannot be drawn as asked (an unknown suffix, PNG without matplotlib)."""


def lanes(timeline: dict[str, Any]) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """Per stage, in the timeline's stage order: (lane, invocation) for each of its invocations,
    lanes assigned first-fit by start time so that no two bars in one lane overlap."""
    horizon = span(timeline)
    rows: dict[str, list[tuple[int, dict[str, Any]]]] = {s["name"]: [] for s in timeline["stages"]}
    ends: dict[str, list[float]] = {name: [] for name in rows}
    for inv in sorted(timeline["invocations"], key=lambda i: i["start_s"]):
        free = ends[inv["stage"]]
        end = horizon if inv["end_s"] is None else inv["end_s"]
        lane = next((i for i, e in enumerate(free) if e <= inv["start_s"]), len(free))
        lane = min(lane, MAX_LANES - 1)
        if lane == len(free):
            free.append(end)
        else:
            free[lane] = max(free[lane], end)
        rows[inv["stage"]].append((lane, inv))
    return rows


def span(timeline: dict[str, Any]) -> float:
    """The time the picture covers: the request's duration, or its last recorded moment."""
    times = [timeline.get("duration_s") or 0.0]
    for inv in timeline["invocations"]:
        times += [inv["start_s"], inv["end_s"] or 0.0, *inv["outputs_s"]]
    return max(times) or 1e-3


def draw(timelines: list[tuple[str, dict[str, Any]]], path: str | Path) -> Path:
    """Write the timelines, one panel each on a common time axis, to ``path`` (.html or .png)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        path.write_text(draw_html(timelines), encoding="utf-8")
    elif suffix == ".png":
        draw_png(timelines, path)
    else:
        raise TimelineDrawError(f"cannot draw a timeline as {path.name!r}: name a .html file "
                                f"(self-contained SVG) or a .png file (needs matplotlib)")
    return path


# -- HTML: inline SVG ---------------------------------------------------------------------------

_LEFT, _RIGHT, _LANE, _GAP, _AXIS = 150, 20, 7, 8, 28


def _svg(label: str, timeline: dict[str, Any], horizon: float, width: int = 1100) -> str:
    rows = lanes(timeline)
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(rows)}
    scale = (width - _LEFT - _RIGHT) / horizon
    heights = {name: max(2, 1 + max((lane for lane, _ in invs), default=0)) * _LANE for name, invs in rows.items()}
    height = _AXIS + sum(h + _GAP for h in heights.values()) + _AXIS
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(label)}">']
    y = _AXIS
    for name, invs in rows.items():
        h = heights[name]
        out.append(f'<g class="row" data-stage="{html.escape(name)}">')
        out.append(f'<rect x="{_LEFT}" y="{y - 2}" width="{width - _LEFT - _RIGHT}" height="{h + 4}" '
                   f'fill="#f4f4f4"/>')
        out.append(f'<text x="{_LEFT - 8}" y="{y + h / 2 + 4:.1f}" text-anchor="end">{html.escape(name)}</text>')
        for lane, inv in invs:
            x0 = _LEFT + inv["start_s"] * scale
            end = horizon if inv["end_s"] is None else inv["end_s"]
            w = max(1.0, (end - inv["start_s"]) * scale)
            by = y + lane * _LANE
            fill = "#333" if inv["kind"] == "group" else colours[name]
            dash = ' stroke="#000" stroke-dasharray="2,2"' if inv["end_s"] is None else ""
            tip = (f'{name} {inv["kind"]} replica {inv["replica"]} {inv["ancestry"]}: '
                   f'{inv["start_s"]:.4f}-{"running" if inv["end_s"] is None else f"{end:.4f}"} s, '
                   f'{len(inv["outputs_s"])} output(s), {inv["status"] or "no ack"}')
            out.append(f'<rect class="bar" x="{x0:.2f}" y="{by}" width="{w:.2f}" height="{_LANE - 1}" '
                       f'fill="{fill}"{dash}><title>{html.escape(tip)}</title></rect>')
            for t in inv["outputs_s"]:
                tx = _LEFT + t * scale
                out.append(f'<line x1="{tx:.2f}" x2="{tx:.2f}" y1="{by}" y2="{by + _LANE - 1}" '
                           f'stroke="#000" stroke-width="1"/>')
        out.append("</g>")
        y += h + _GAP
    # The time axis, at the bottom.
    out.append(f'<line x1="{_LEFT}" x2="{width - _RIGHT}" y1="{y}" y2="{y}" stroke="#000"/>')
    for tick in _ticks(horizon):
        tx = _LEFT + tick * scale
        out.append(f'<line x1="{tx:.2f}" x2="{tx:.2f}" y1="{y}" y2="{y + 4}" stroke="#000"/>')
        out.append(f'<text x="{tx:.2f}" y="{y + 16}" text-anchor="middle">{tick:g}</text>')
    out.append(f'<text x="{width - _RIGHT}" y="{_AXIS - 10}" text-anchor="end">seconds from the '
               f'request\'s start</text>')
    out.append(f'<text x="{_LEFT}" y="{_AXIS - 10}" font-weight="bold">{html.escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _ticks(horizon: float) -> list[float]:
    step = 10 ** len(str(int(horizon))) / 10 if horizon >= 1 else 0.1
    while horizon / step > 12:
        step *= 2
    while horizon / step < 4:
        step /= 2
    n = int(horizon / step) + 1
    return [round(i * step, 6) for i in range(n)]


def draw_html(timelines: list[tuple[str, dict[str, Any]]]) -> str:
    """One self-contained HTML page with a panel per timeline, on one time scale."""
    horizon = max(span(t) for _, t in timelines)
    panels = []
    for label, timeline in timelines:
        facts = (f'request {html.escape(str(timeline["request_id"]))}: {timeline["outcome"] or "running"}'
                 f', {len(timeline["invocations"])} invocations'
                 + (", truncated (the recording reached its limit)" if timeline["truncated"] else ""))
        panels.append(f'<section><p>{facts}</p>\n{_svg(label, timeline, horizon)}\n</section>')
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>altoflow request timeline</title><style>"
            "body{font:13px system-ui,sans-serif;margin:16px} svg text{font:12px system-ui,sans-serif}"
            " section{margin-bottom:24px}</style></head><body>\n"
            "<h1>Request timeline</h1><p>One row per stage (topological order), one bar per "
            "invocation from its start to its end, a tick per output it produced; dark bars are an "
            "aggregate group's flush, dashed ones had not ended. Hover a bar for its ancestry.</p>\n"
            + "\n".join(panels) + "\n</body></html>\n")


# -- PNG: matplotlib ----------------------------------------------------------------------------


def draw_png(timelines: list[tuple[str, dict[str, Any]]], path: str | Path) -> None:
    """The same picture as a PNG, with the panels side by side."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TimelineDrawError(
            "drawing a timeline as PNG needs matplotlib, which is not installed: "
            "pip install matplotlib (or write a .html file, which needs nothing)") from None
    horizon = max(span(t) for _, t in timelines)
    fig, axes = plt.subplots(1, len(timelines), figsize=(7 * len(timelines), 4.5), sharex=True,
                             squeeze=False)
    for ax, (label, timeline) in zip(axes[0], timelines):
        rows = lanes(timeline)
        names = list(rows)
        ticks = []
        y = 0.0
        for i, name in enumerate(reversed(names)):
            invs = rows[name]
            n = max(1, 1 + max((lane for lane, _ in invs), default=0))
            colour = PALETTE[(len(names) - 1 - i) % len(PALETTE)]
            for lane, inv in invs:
                end = horizon if inv["end_s"] is None else inv["end_s"]
                by = y + (n - 1 - lane) / n  # lane 0 on top
                ax.broken_barh([(inv["start_s"], max(end - inv["start_s"], horizon / 500))],
                               (by, 0.9 / n), facecolors="#333" if inv["kind"] == "group" else colour,
                               linestyles="dashed" if inv["end_s"] is None else "solid")
                if inv["outputs_s"]:
                    ax.vlines(inv["outputs_s"], by, by + 0.9 / n, colors="black", linewidth=0.5)
            ticks.append(y + 0.45)
            y += 1.15
        ax.set_yticks(ticks, list(reversed(names)))
        ax.set_xlim(0, horizon * 1.02)
        ax.set_xlabel("seconds from the request's start")
        ax.set_title(label)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
