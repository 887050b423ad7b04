"""``altoflow run --timeline OUT``: the request's timeline drawn as the ALTO paper's Figure 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from altoflow.cli import app

TRICKLE = str(Path(__file__).resolve().parent / "pipelines" / "trickle.py")
runner = CliRunner()


def test_run_timeline_writes_a_self_contained_html_page_with_a_row_per_stage(tmp_path):
    out = tmp_path / "timeline.html"
    result = runner.invoke(app, ["run", TRICKLE, "--input", '{"n": 3, "pause": 0.01}',
                                 "--timeline", str(out)])
    assert result.exit_code == 0, result.output
    assert '"total": 30' in result.stdout
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page
    assert re.findall(r'data-stage="([^"]+)"', page) == ["claims", "verify", "total"]
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    # One bar per invocation: the fan-out, three verifications, three folds, the group's flush.
    assert page.count('class="bar"') == 8


def test_run_timeline_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "timeline.png"
    result = runner.invoke(app, ["run", TRICKLE, "--input", '{"n": 2, "pause": 0.01}',
                                 "--timeline", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_timeline_names_the_suffixes_it_draws(tmp_path):
    result = runner.invoke(app, ["run", TRICKLE, "--input", '{"n": 1}',
                                 "--timeline", str(tmp_path / "t.svg")])
    assert result.exit_code == 2
    assert ".html" in result.output and ".png" in result.output


def test_run_timeline_png_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    result = runner.invoke(app, ["run", TRICKLE, "--input", '{"n": 1}',
                                 "--timeline", str(tmp_path / "t.png")])
    assert result.exit_code == 2 and "pip install matplotlib" in result.output
    assert not (tmp_path / "t.png").exists()


def test_drawing_a_png_without_matplotlib_raises_the_same_advice(monkeypatch):
    import sys

    from altoflow._timeline_draw import TimelineDrawError, draw_png

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with pytest.raises(TimelineDrawError, match="pip install matplotlib"):
        draw_png([("x", {"stages": [], "invocations": [], "duration_s": 1.0})], "x.png")
