"""``Pipeline.draw(format=...)``, a notebook's picture of a Pipeline (``_repr_svg_``), and the
text graph at the terminal's width."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

import altoflow as af
from altoflow.cli import app
from altoflow.compiler.render import to_dot, to_json, to_mermaid, to_text

FACTOOL = str(Path(__file__).resolve().parent / "pipelines" / "factool.py")
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def pipeline() -> af.Pipeline:
    return af.Pipeline.from_module(FACTOOL)


def test_draw_gives_what_compile_prints_in_each_format(pipeline) -> None:
    plan = pipeline.compiled.plan
    assert pipeline.draw("json") == to_json(plan)
    assert pipeline.draw("mermaid") == to_mermaid(plan)
    assert pipeline.draw("dot") == to_dot(plan)
    assert pipeline.draw("text", width=100) == to_text(plan, 100)
    assert pipeline.draw("svg") == CliRunner().invoke(app, ["compile", FACTOOL, "--format", "svg"]).stdout


def test_draw_names_the_formats_it_takes(pipeline) -> None:
    with pytest.raises(ValueError, match=r"format='png'\): take one of 'text', 'json', 'mermaid', 'dot', 'svg'"):
        pipeline.draw("png")


def test_the_svg_has_a_box_per_stage_and_an_arrow_per_input(pipeline) -> None:
    root = ET.fromstring(pipeline.draw("svg"))
    plan = pipeline.compiled.plan
    stages = root.findall(f"{SVG}g[@class='stage']")
    assert [g.get("id") for g in stages] == plan.names
    for g, stage in zip(stages, plan.stages):
        lines = [t.text for t in g.findall(f"{SVG}text")]
        assert lines[0] == stage.name
        # A keyed aggregate has a double border.
        assert len(g.findall(f"{SVG}rect")) == (2 if stage.route_key is not None else 1)
    edges = root.findall(f"{SVG}path[@class='edge']")
    # One per stage input, and one from the request to the stage that reads only its fields.
    assert len(edges) == sum(len(s.inputs) for s in plan.stages) + 1
    labels = [t.text for t in root.findall(f"{SVG}text")]
    assert "[claim] broadcast" in labels and "[claim/query/token]" in labels
    dashed = [e for e in edges if e.get("stroke-dasharray")]
    assert len(dashed) == 1  # evidence's broadcast input, claims
    width = float(root.get("width"))
    for g in stages:  # every box inside the picture
        rect = g.find(f"{SVG}rect")
        assert 0 <= float(rect.get("x")) and float(rect.get("x")) + float(rect.get("width")) <= width


def test_a_notebook_shows_a_pipeline_as_its_svg(pipeline) -> None:
    assert pipeline._repr_svg_() == pipeline.draw("svg")

    @af.stage
    def ping(pong: int) -> int:  # a cycle: does not compile
        return pong

    @af.stage
    def pong(ping: int) -> int:
        return ping

    broken = af.Pipeline([ping, pong])
    with pytest.raises(af.CompileError):
        broken.draw("svg")
    assert broken._repr_svg_() is None  # the plain repr is shown instead


def test_text_wraps_at_the_terminals_width(monkeypatch, pipeline) -> None:
    monkeypatch.setenv("COLUMNS", "48")
    out = CliRunner().invoke(app, ["compile", FACTOOL]).stdout
    assert out == to_text(pipeline.compiled.plan, 48)
    assert max(len(line) for line in out.splitlines()) <= 48
    assert pipeline.draw() == out
    monkeypatch.setenv("COLUMNS", "200")
    wide = CliRunner().invoke(app, ["compile", FACTOOL]).stdout
    assert len(wide.splitlines()) < len(out.splitlines())  # fewer lines wrapped
    assert wide == to_text(pipeline.compiled.plan, 200)
