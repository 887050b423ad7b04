"""The live page at ``GET /``: its files as served, and what it shows in headless Chromium.

The tests of the files always run. The browser tests need a Chromium binary (Debian:
``apt-get install -y chromium``) and skip without one; they fill in the page's form, submit it
and read the DOM the page's script built from ``/v1/graph``, the NDJSON answer and ``/metrics``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Literal

import anyio
import httpx
import pydantic
import pytest
import serving_apps
from chromium import Browser, find_chromium
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from altoflow import Pipeline, stage
from altoflow.server import LocalIngress, ServedIngress, create_app, serve_in_thread
from altoflow.server.page import page_routes

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "altoflow" / "server" / "static"
PIPELINES = ROOT / "tests" / "pipelines"
WORDCOUNT = str(PIPELINES / "wordcount.py")
FAILING = str(PIPELINES / "failing.py")
SCALED = str(PIPELINES / "scaled.py")
ADMIN_TOKEN = "a-long-admin-token-for-tests"

needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium binary on PATH (chromium, chromium-browser, google-chrome): the live "
           "page's browser tests need one; on Debian: apt-get install -y chromium")


class Filters(pydantic.BaseModel):
    year: int
    source: str = "any"


@stage(output=True)
def echo(question: str, k: int = 3, temperature: float | None = None, strict: bool = False,
         tags: list[str] = [], mode: Literal["fast", "exact"] = "fast",  # noqa: B006
         filters: Filters | None = None) -> dict:
    return {"question": question, "k": k, "temperature": temperature, "strict": strict,
            "tags": tags, "mode": mode, "filters": filters}


every_kind = Pipeline([echo], name="every_kind")


# -- the files ---------------------------------------------------------------------------------


def test_get_root_is_the_page(serve) -> None:
    url = serve(WORDCOUNT)
    resp = httpx.get(url + "/")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    assert resp.text == (STATIC / "index.html").read_text()
    assert '<script src="/static/live.js"' in resp.text
    assert '<link rel="stylesheet" href="/static/live.css">' in resp.text
    assert resp.headers["content-security-policy"].startswith("default-src 'self'")


@pytest.mark.parametrize(("name", "media"), [
    ("live.js", "text/javascript; charset=utf-8"),
    ("live.css", "text/css; charset=utf-8"),
    ("index.html", "text/html; charset=utf-8"),
])
def test_the_page_files_are_served_with_their_types(serve, name: str, media: str) -> None:
    resp = httpx.get(serve(WORDCOUNT) + "/static/" + name)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == media
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.content == (STATIC / name).read_bytes()


def test_other_paths_are_not_found(serve) -> None:
    url = serve(WORDCOUNT)
    for path in ["/static/nope.js", "/static/", "/static/../page.py", "/static/%2e%2e/page.py",
                 "/index.html", "/live.js", "/nope"]:
        resp = httpx.get(url + path)
        assert resp.status_code == 404, path
    resp = httpx.get(url + "/static/nope.js")
    assert resp.text == ("no such file: /static/nope.js (the page's files are index.html, "
                         "live.css, live.js)\n")
    assert httpx.post(url + "/", json={}).status_code == 405


def test_the_page_keeps_the_host_check(serve) -> None:
    url = serve(WORDCOUNT)
    for path in ["/", "/static/live.js"]:
        resp = httpx.get(url + path, headers={"Host": "rebound.example"})
        assert resp.status_code == 400
        assert "--allowed-host rebound.example" in resp.json()["detail"]


def test_the_page_asks_only_its_own_server() -> None:
    """No CDN, no other origin: every URL in the page's files is a path on this server."""
    html = (STATIC / "index.html").read_text()
    js = (STATIC / "live.js").read_text()
    css = (STATIC / "live.css").read_text()
    assert re.findall(r'(?:src|href)="([^"]*)"', html) == ["/static/live.css", "/static/live.js"]
    fetched = sorted(set(re.findall(r'fetch\("([^"]*)"', js)))
    assert fetched == ["/metrics", "/v1/graph", "/v1/run", "/v1/stages"]
    urls = re.findall(r"\w+://[^\s\"'`)]*", html + js + css)
    assert urls == ["http://www.w3.org/2000/svg"]  # the SVG namespace, a name, not a fetch
    assert "@import" not in css and "url(" not in css.replace("url(#arrow)", "")


def test_the_wheel_carries_the_page(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("altoflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ["index.html", "live.js", "live.css"]:
        assert f"altoflow/server/static/{name}" in names


# -- in the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        pytest.skip("no Chromium binary")
    with Browser() as b:
        yield b


@pytest.fixture
def page(browser):
    """``page(url)``: the browser at ``url``'s page, loaded; the page may throw nothing."""
    browser.errors.clear()

    def goto(url: str) -> Browser:
        browser.goto(url + "/")
        return browser

    yield goto
    assert browser.errors == []


def run(browser: Browser, ended: str = "done") -> None:
    browser.evaluate("document.getElementById('run').click()")
    browser.wait_for(f"document.body.dataset.run === {json.dumps(ended)}", f"the run to end {ended}")


def marks(browser: Browser) -> dict[str, list[str]]:
    """Each timeline row's marks, by type, in arrival order."""
    return browser.evaluate("""Object.fromEntries([...document.querySelectorAll('.track')].map(
        t => [t.dataset.row, [...t.querySelectorAll('.mark')].map(m => m.dataset.type)]))""")


def text(browser: Browser, selector: str) -> str:
    return browser.evaluate(f"document.querySelector({json.dumps(selector)}).textContent")


@needs_chromium
def test_the_page_draws_the_graph_and_shows_a_runs_events(serve, page) -> None:
    browser = page(serve(WORDCOUNT))
    browser.wait_for("document.querySelector('g.box').dataset.inFlight === '0'", "the metrics")
    boxes = browser.evaluate("""[...document.querySelectorAll('#graph g.box')].map(
        g => [g.dataset.stage, [...g.querySelectorAll('text')].map(t => t.textContent)])""")
    assert [name for name, _ in boxes] == ["words", "upper", "total"]
    words, upper, total = (lines for _, lines in boxes)
    assert words == ["words", "fanout · 1/1 up", "request → word", "load-balanced",
                     "running 0 · waiting 0"]
    assert upper[:2] == ["upper", "output"]
    assert total == ["total", "output", "aggregate · 1/1 up", "word → request", "key (request)",
                     "running 0 · waiting 0"]
    assert browser.evaluate("document.querySelectorAll('#graph path.edge').length") == 2
    assert browser.evaluate("[...document.querySelectorAll('#fields [name]')].map(i => i.name)") \
        == ["text"]

    browser.type_into("#field-text", "alpha beta gamma")
    run(browser)
    assert marks(browser) == {"words": [], "upper": ["output"] * 3, "total": ["output"],
                              "(request)": ["done"]}
    status = text(browser, "#run-status")
    assert re.fullmatch(r"done in \d+ ms · 4 output\(s\) · request [0-9a-f]{32}", status), status
    titles = browser.evaluate(
        "[...document.querySelectorAll('[data-row=upper] .mark')].map(m => m.title)")
    assert sorted(t.split(" · at ")[0] for t in titles) == [
        "upper (word=0): ALPHA", "upper (word=1): BETA", "upper (word=2): GAMMA"]
    browser.evaluate("document.querySelector('[data-row=total] .mark').click()")
    detail = text(browser, "#detail")
    assert detail.startswith("total (depth 0): 3 · at ") and detail.endswith("\n\n3")

    # a second run starts a fresh timeline
    run(browser)
    assert marks(browser)["upper"] == ["output"] * 3


@needs_chromium
def test_the_form_sends_each_kind_of_field_as_its_json_type(serve, page) -> None:
    browser = page(serve(every_kind))
    kinds = browser.evaluate("""[...document.querySelectorAll('#fields [name]')].map(
        i => [i.name, i.tagName.toLowerCase(), i.type])""")
    assert kinds == [["question", "input", "text"], ["k", "input", "number"],
                     ["temperature", "input", "number"], ["strict", "input", "checkbox"],
                     ["tags", "textarea", "textarea"], ["mode", "select", "select-one"],
                     ["filters", "textarea", "textarea"]]
    assert browser.evaluate("document.getElementById('field-k').value") == "3"

    browser.type_into("#field-question", "Why is the sky blue?")
    browser.type_into("#field-temperature", "0.5")
    browser.type_into("#field-tags", "physics\noptics\n")
    browser.type_into("#field-filters", '{"year": 2020}')
    browser.evaluate("document.getElementById('field-strict').click();"
                     "document.getElementById('field-mode').value = 'exact'")
    run(browser)
    browser.evaluate("document.querySelector('[data-row=echo] .mark').click()")
    value = json.loads(text(browser, "#detail").split("\n\n", 1)[1])
    assert value == {"question": "Why is the sky blue?", "k": 3, "temperature": 0.5,
                     "strict": True, "tags": ["physics", "optics"], "mode": "exact",
                     "filters": {"year": 2020, "source": "any"}}

    # a field that is not JSON is named before anything is sent
    browser.evaluate("document.getElementById('field-filters').value = '{year'")
    browser.evaluate("document.getElementById('run').click()")
    assert text(browser, "#run-status").startswith("field filters is not valid JSON")

    # the raw JSON body, sent as it is: the server's 422 is shown with the field it names
    browser.evaluate("document.getElementById('raw').open = true")
    browser.wait_for("document.getElementById('raw-json').value !== ''", "the raw JSON")
    browser.evaluate("""document.getElementById('raw-json').value =
        JSON.stringify({question: 'q', k: 'many'})""")
    run(browser, "refused")
    status = text(browser, "#run-status")
    assert status.startswith("HTTP 422: ") and "k" in status and "integer" in status
    assert browser.evaluate("document.getElementById('run-status').className") == "bad"


@needs_chromium
def test_a_failing_stage_is_shown_in_red_with_its_error(serve, page) -> None:
    browser = page(serve(FAILING))
    browser.type_into("#field-text", "good bad")
    run(browser, "error")
    rows = marks(browser)
    assert rows["checked"][-1] == "error" and rows["(request)"] == []
    status = text(browser, "#run-status")
    assert status.startswith("stage checked (word=1) failed: ValueError: cannot check 'bad'")
    assert browser.evaluate("getComputedStyle(document.querySelector('.mark.error'))"
                            ".backgroundColor") == "rgb(198, 40, 40)"
    detail = text(browser, "#detail")
    assert "ValueError: cannot check 'bad'" in detail and "failing.py" in detail  # the traceback


@needs_chromium
def test_the_graph_shows_a_stages_running_invocations(serve, page, gate) -> None:
    browser = page(serve(serving_apps.gated))
    gauge = "document.querySelector('g.box[data-stage=claims]').dataset.inFlight"
    browser.wait_for(f"{gauge} === '0'", "the first metrics")
    browser.type_into("#field-topic", "tea")
    browser.evaluate("document.getElementById('run').click()")
    assert gate.reached.wait(10)
    browser.wait_for(f"{gauge} === '1'", "claims to show one running invocation")
    assert "busy" in browser.evaluate(
        "document.querySelector('g.box[data-stage=claims]').classList.value")
    assert text(browser, "#requests-in-flight") == "1"
    # the first claim's output is on the timeline while the request still runs
    browser.wait_for("document.querySelectorAll('[data-row=checked] .mark').length === 1",
                     "the first output")
    assert browser.evaluate("document.body.dataset.run") == "running"
    browser.wait_for("document.querySelectorAll('[data-row=claims] .load[data-running=\"1\"]')"
                     ".length > 0",
                     "the timeline to shade the running stage")
    gate.release.set()
    browser.wait_for("document.body.dataset.run === 'done'", "the run to end")
    assert marks(browser)["checked"] == ["output", "output"]
    browser.wait_for(f"{gauge} === '0'", "claims to be idle again")


@needs_chromium
def test_a_rescale_shows_in_the_graphs_replica_count(page) -> None:
    ingress = ServedIngress(SCALED, inline=frozenset({"all"}))
    with serve_in_thread(create_app(ingress, admin_token=ADMIN_TOKEN)) as url:
        browser = page(url)
        replicas = ("[...document.querySelectorAll('g.box[data-stage=work] text')]"
                    ".map(t => t.textContent).find(t => t.endsWith(' up'))")
        browser.wait_for(f"{replicas} === 'map · 1/1 up'", "the first metrics")
        answer = httpx.put(url + "/v1/stages/work/replicas", json={"replicas": 3},
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert answer.status_code == 200, answer.text
        browser.wait_for(f"{replicas}.endsWith(' · 3/3 up')", "the rescaled count")


def scripted_app(lines: list[str], body_seen: list) -> Starlette:
    """The page's routes, a /v1/run that answers ``lines``, one every 20 ms, and a request
    timeline of two invocations (``GET /v1/requests/r-1/timeline``)."""
    graph = {
        "stages": [{"name": "answer", "kind": "source", "inputs": [], "levels_in": [],
                    "levels_out": [], "route_key": None, "replicas": 1}],
        "outputs": ["answer"],
        "request_schema": {"type": "object", "properties": {}, "title": "ScriptedRequest"},
    }

    async def run_(request: Request) -> Response:
        body_seen.append((request.headers["content-type"], await request.json()))

        async def stream():
            for line in lines:
                await anyio.sleep(0.02)
                yield line + "\n"

        return StreamingResponse(stream(), media_type="application/x-ndjson",
                                 headers={"X-Request-Id": "r-1"})

    async def timeline_(request: Request) -> Response:
        if request.path_params["rid"] != "r-1":
            return JSONResponse({"detail": "no such request"}, status_code=404)
        return JSONResponse({"request_id": "r-1", "duration_s": 0.15, "outcome": "done",
                             "invocations": [
            {"stage": "answer", "kind": "call", "replica": 0, "ancestry": {}, "start_s": 0.01,
             "end_s": 0.12, "outputs_s": [0.06, 0.08], "status": "ok"},
            {"stage": "answer", "kind": "call", "replica": 1, "ancestry": {}, "start_s": 0.02,
             "end_s": None, "outputs_s": [], "status": None},
            {"stage": "gone", "kind": "call", "replica": 0, "ancestry": {}, "start_s": 0.0,
             "end_s": 0.1, "outputs_s": [], "status": "ok"}]})

    async def graph_(request: Request) -> Response:
        return JSONResponse(graph)

    async def metrics_(request: Request) -> Response:
        return Response("# HELP altoflow_stage_in_flight x\n# TYPE altoflow_stage_in_flight gauge\n"
                        'altoflow_stage_in_flight{stage="answer"} 2.0\n'
                        'altoflow_stage_queue_depth{stage="answer"} 5.0\n'
                        'altoflow_replicas_live{stage="answer"} 1.0\n'
                        "altoflow_requests_in_flight 1.0\n", media_type="text/plain")

    return Starlette(routes=[Route("/v1/run", run_, methods=["POST"]), Route("/v1/graph", graph_),
                             Route("/metrics", metrics_),
                             Route("/v1/requests/{rid}/timeline", timeline_), *page_routes()])


@needs_chromium
def test_partial_events_unknown_lines_and_the_recorded_timeline_are_shown(page) -> None:
    lines = [
        '{"type": "partial", "stage": "answer", "ancestry": {}, "delta": "Tea is "}',
        '{"type": "partial", "stage": "answer", "ancestry": {}, "delta": "a drink."}',
        '{"type": "output", "stage": "answer", "ancestry": {}, "value": "Tea is a drink."}',
        '{"type": "output", "stage": "answer", "ancestry": {}, "value": NaN}',
        '{"type": "heartbeat"}',
        '{"type": "done", "request_id": "r-1"}',
    ]
    seen: list = []
    with serve_in_thread(scripted_app(lines, seen)) as url:
        browser = page(url)
        assert text(browser, "#fields") == "This pipeline takes no request fields."
        browser.wait_for("document.querySelector('g.box').dataset.queued === '5'", "the metrics")
        assert text(browser, "g.box text.live") == "running 2 · waiting 5"
        run(browser)
    assert seen == [("application/json", {})]
    assert marks(browser) == {"answer": ["partial", "partial", "output"],
                              "(request)": ["error", "partial", "done"]}
    assert text(browser, "#partials .partial-text") == "Tea is a drink."
    assert text(browser, "#run-status").startswith("done in ")
    spans = browser.evaluate("""[...document.querySelectorAll('[data-row=answer] .span')].map(
        s => [s.className, s.title])""")  # the stage "gone" is not in the graph: no row, no bar
    assert sorted(spans) == [
        ["span ok", "answer (depth 0): call on replica 0, 10 ms to 120 ms, 2 output(s), ok"],
        ["span open",
         "answer (depth 0): call on replica 1, 20 ms to 150 ms, 0 output(s), not acknowledged"],
    ]


@needs_chromium
def test_a_long_graph_wraps_into_bands_that_fit_the_window(serve, page) -> None:
    browser = page(serve(str(PIPELINES / "twelve.py")))
    fit = browser.evaluate("""(() => {
        const graph = document.getElementById('graph').getBoundingClientRect();
        const boxes = [...document.querySelectorAll('#graph g.box rect')].map(
            r => r.getBoundingClientRect());
        const apart = (a, b) => a.right <= b.left || b.right <= a.left ||
                                a.bottom <= b.top || b.bottom <= a.top;
        return {inside: boxes.every(b => b.left >= graph.left && b.right <= graph.right),
                apart: boxes.every((a, i) => boxes.slice(i + 1).every(b => apart(a, b))),
                below: boxes.at(-1).top > boxes[0].bottom,  // report, under outline's band
                lefts: new Set(boxes.map(b => Math.round(b.left))).size,
                width: boxes[0].width};
    })()""")
    # 11 columns of 156 px boxes do not fit 1200 px: a second band, boxes at their full size
    assert fit == {"inside": True, "apart": True, "below": True, "lefts": 6, "width": 156}
    assert browser.evaluate("document.querySelectorAll('#graph g.box').length") == 12
    assert browser.evaluate("[...document.querySelectorAll('#fields [name]')].map(i => i.name)") \
        == ["question", "sections"]
