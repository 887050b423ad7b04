"""The ``altoflow`` command: ``compile`` in every format, ``run``, exit statuses, target forms.

Most tests call the Typer app in-process (``CliRunner``); one runs the installed console script
in a subprocess, as a user's shell would. The pipelines are files under ``tests/pipelines/``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from typer.testing import CliRunner

from altoflow.cli import app

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
PIPES = TESTS / "pipelines"
HELPSEARCH = str(ROOT / "examples" / "helpsearch.py")
TWELVE = str(PIPES / "twelve.py")
WORDCOUNT = str(PIPES / "wordcount.py")
FAILING = str(PIPES / "failing.py")

runner = CliRunner()


def cli(*args: str):
    result = runner.invoke(app, list(args))
    # An exception other than a deliberate exit is a crash, whatever the exit code says.
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def ndjson(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- compile ---------------------------------------------------------------------------------


def test_compile_prints_stages_kinds_keys_replicas_and_edges():
    result = cli("compile", HELPSEARCH)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("pipeline helpsearch: 5 stages, levels query > term\n")
    assert "request fields: question" in out
    blocks = {line.split()[1]: line for line in out.splitlines() if line.startswith("● ")}
    assert list(blocks) == ["queries", "terms", "scores", "best", "report"]  # topological
    assert "fanout +query" in blocks["queries"] and "balanced" in blocks["queries"]
    assert "aggregate ops.sum over term" in blocks["scores"]
    assert "key (request, query)" in blocks["scores"] and "x2" in blocks["scores"]
    assert "key (request)" in blocks["report"] and "output" in blocks["report"]
    assert re.search(r"← terms\s+\[query/term\]", out)
    assert re.search(r"← scores\s+\[query\]\s+zip", out)


def test_show_graph_flag_prints_the_same_picture():
    plain, flagged = cli("compile", HELPSEARCH), cli("compile", HELPSEARCH, "--show-graph")
    assert flagged.exit_code == 0
    assert flagged.stdout == plain.stdout


def test_text_picture_of_a_twelve_stage_pipeline_fits_80_columns():
    result = cli("compile", f"{TWELVE}:pipeline")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("pipeline twelve: 12 stages")
    assert sum(line.startswith("● ") for line in lines) == 12
    too_long = [line for line in lines if len(line) > 80]
    assert not too_long
    # The long headers were wrapped, not cut: every tag is still there.
    text = " ".join(lines)
    assert "key (request, section, subquestion)" in text
    assert "broadcast" in text and "zip" in text


def test_text_picture_of_a_pipeline_with_many_request_fields_fits_80_columns(tmp_path):
    app_file = tmp_path / "settings.py"
    app_file.write_text(
        "from altoflow import stage\n\n"
        "@stage\n"
        "def answer(question: str, user_id: str, language: str, temperature: float,\n"
        "           max_tokens: int, top_k: int, style: str, audience: str) -> str:\n"
        "    return question\n"
    )
    result = cli("compile", str(app_file))
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


def test_json_format_is_the_section_8_contract():
    result = cli("compile", HELPSEARCH, "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc == {
        "stages": [
            {"name": "queries", "kind": "fanout", "inputs": [], "levels_in": [],
             "levels_out": ["query"], "route_key": None, "replicas": 1},
            {"name": "terms", "kind": "fanout", "inputs": ["queries"], "levels_in": ["query"],
             "levels_out": ["query", "term"], "route_key": None, "replicas": 1},
            {"name": "scores", "kind": "aggregate", "inputs": ["terms"],
             "levels_in": ["query", "term"], "levels_out": ["query"], "route_key": ["query"],
             "replicas": 2},
            {"name": "best", "kind": "join", "inputs": ["scores", "queries"],
             "levels_in": ["query"], "levels_out": ["query"], "route_key": None, "replicas": 1},
            {"name": "report", "kind": "aggregate", "inputs": ["best"], "levels_in": ["query"],
             "levels_out": [], "route_key": [], "replicas": 1},
        ]
    }


def test_json_format_of_the_twelve_stage_pipeline_keys_only_aggregates():
    doc = json.loads(cli("compile", TWELVE + ":pipeline", "-f", "json").stdout)
    keys = {s["name"]: s["route_key"] for s in doc["stages"]}
    assert keys == {
        "outline": None, "subquestions": None, "keywords": None,
        "hits": ["section", "subquestion"], "context": None, "passages": ["section"],
        "draft": None, "checks": None, "verdict": ["section"], "passed": [], "document": [],
        "report": None,
    }
    assert all(set(s) == {"name", "kind", "inputs", "levels_in", "levels_out", "route_key",
                          "replicas"} for s in doc["stages"])


def test_json_format_ends_with_a_newline():
    assert cli("compile", HELPSEARCH, "--format", "json").stdout.endswith("}\n")


def _edges(target: str) -> list[tuple[str, str, str]]:
    """(source, stage, level-stack label) for every input edge, from the JSON contract."""
    stages = json.loads(cli("compile", target, "-f", "json").stdout)["stages"]
    out_levels = {s["name"]: s["levels_out"] for s in stages}
    return [(i, s["name"], "[" + "/".join(out_levels[i]) + "]") for s in stages for i in s["inputs"]]


@pytest.mark.parametrize("target", [HELPSEARCH, TWELVE + ":pipeline"], ids=["helpsearch", "twelve"])
def test_mermaid_names_every_stage_and_labels_every_edge(target):
    result = cli("compile", target, "--format", "mermaid")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("flowchart TD\n")
    for src, dst, label in _edges(target):
        # A broadcast edge says so after its stack.
        assert re.search(rf'^    {src} -->\|"{re.escape(label)}( broadcast)?"\| {dst}$', out, re.M), (
            src, dst, label)
    names = {s for e in _edges(target) for s in e[:2]}
    for name in names:
        assert re.search(rf"^    {name}[\[(]", out, re.M), name


def test_mermaid_marks_the_broadcast_edge():
    out = cli("compile", TWELVE + ":pipeline", "-f", "mermaid").stdout
    assert '    outline -->|"[section] broadcast"| context\n' in out
    assert '    hits -->|"[section/subquestion]"| context\n' in out


@pytest.mark.parametrize("target", [HELPSEARCH, TWELVE + ":pipeline"], ids=["helpsearch", "twelve"])
def test_dot_names_every_stage_and_labels_every_edge(target):
    result = cli("compile", target, "--format", "dot")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("digraph ") and out.rstrip().endswith("}")
    edges = _edges(target)
    for src, dst, label in edges:
        assert re.search(rf'^  "{src}" -> "{dst}" \[label="{re.escape(label)}"', out, re.M), (
            src, dst, label)
    assert out.count(" -> ") == len(edges)
    for name in {s for e in edges for s in e[:2]}:
        assert re.search(rf'^  "{name}" \[label="{name}\\n', out, re.M), name


def test_dot_labels_are_valid_dot_strings_whatever_the_operator(tmp_path):
    app_file = tmp_path / "quotes.py"
    app_file.write_text(
        "from altoflow import ops, stage\n\n"
        "@stage(fanout='w')\n"
        "def words(text: str):\n"
        "    yield from text.split()\n\n"
        "@stage(aggregate=ops.concat(sep=\"'\"))\n"
        "def quoted(words: str) -> str:\n"
        "    return words\n"
    )
    out = cli("compile", str(app_file), "-f", "dot").stdout
    node = next(line for line in out.splitlines() if line.startswith('  "quoted" ['))
    # A DOT string: quotes inside it are escaped as \"; after it comes the next attribute.
    assert re.fullmatch(r'  "quoted" \[label="(?:[^"\\]|\\.)*"(, \w+=\w+)*\];', node), node


def test_a_cycle_exits_2_naming_the_stages_and_the_fix():
    result = cli("compile", str(PIPES / "cycle.py"))
    assert result.exit_code == 2
    assert result.stdout == ""
    err = result.stderr
    assert err.startswith("error: stages form a cycle")
    assert "'ping'" in err and "'pong'" in err
    assert "cycle.py:" in err  # file:line of the user's functions
    assert "rename the parameter" in err


def test_a_cross_branch_join_exits_2_naming_the_stage_and_the_fix():
    result = cli("compile", str(PIPES / "crossjoin.py"))
    assert result.exit_code == 2
    err = result.stderr
    assert "'matched'" in err and "crossjoin.py:" in err
    assert "[claim/query]" in err and "[claim/keyword]" in err
    assert "Aggregate one of them first" in err
    assert "aggregate=ops.collect, over='keyword'" in err


def test_run_of_an_invalid_pipeline_exits_2_as_well():
    result = cli("run", str(PIPES / "cycle.py"), "--input", "{}")
    assert result.exit_code == 2
    assert "stages form a cycle" in result.stderr


def test_a_target_that_does_not_exist_exits_2():
    result = cli("compile", str(PIPES / "missing.py"))
    assert result.exit_code == 2
    assert "no such file" in result.stderr


def test_a_target_naming_a_missing_attribute_lists_the_pipelines_there():
    result = cli("compile", WORDCOUNT + ":nope")
    assert result.exit_code == 2
    assert "'nope'" in result.stderr and "shout" in result.stderr


# -- run -------------------------------------------------------------------------------------


def test_run_prints_the_result_as_json():
    result = cli("run", WORDCOUNT, "--input", '{"text": "a b a"}')
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"upper": ["A", "B", "A"], "total": 3}


def test_run_of_the_example_application():
    result = cli("run", HELPSEARCH, "-i", '{"question": "lambda, and yield"}')
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [b["query"] for b in out["best"]] == ["lambda", "yield"]
    assert out["best"][0]["topics"][0] == "lambda"
    assert len(out["report"]) == 2 and out["report"][0].startswith("'lambda': ")


def test_run_with_events_prints_ndjson_ending_with_done():
    result = cli("run", WORDCOUNT, "--events", "--input", '{"text": "a b a"}')
    assert result.exit_code == 0, result.output
    events = ndjson(result.stdout)
    assert events[-1] == {"type": "done"}
    outputs = events[:-1]
    assert all(e["type"] == "output" for e in outputs)
    assert all(set(e) == {"type", "stage", "ancestry", "value"} for e in outputs)
    upper = sorted((e["ancestry"]["word"], e["value"]) for e in outputs if e["stage"] == "upper")
    assert upper == [(0, "A"), (1, "B"), (2, "A")]
    assert [e for e in outputs if e["stage"] == "total"] == [
        {"type": "output", "stage": "total", "ancestry": {}, "value": 3}
    ]


def test_run_with_events_and_no_outputs_prints_only_done():
    result = cli("run", WORDCOUNT, "--events", "--input", '{"text": ""}')
    assert result.exit_code == 0
    assert ndjson(result.stdout) == [
        {"type": "output", "stage": "total", "ancestry": {}, "value": 0},  # the identity
        {"type": "done"},
    ]


@pytest.mark.parametrize("bad", ["{", "{'text': 'a'}", "text=a"])
def test_invalid_input_json_exits_2(bad):
    result = cli("run", WORDCOUNT, "--input", bad)
    assert result.exit_code == 2
    assert "--input is not valid JSON" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("bad", ['["a b"]', '"a b"', "3"])
def test_input_that_is_not_an_object_exits_2(bad):
    result = cli("run", WORDCOUNT, "--input", bad)
    assert result.exit_code == 2
    assert "JSON object of request fields" in result.stderr


def test_a_request_missing_a_field_exits_2_naming_the_field():
    result = cli("run", WORDCOUNT, "--input", "{}")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "text" in result.stderr and "Field required" in result.stderr


def test_a_request_with_an_unknown_field_exits_2_naming_it():
    result = cli("run", WORDCOUNT, "--input", '{"text": "a", "txet": "b"}')
    assert result.exit_code == 2
    assert "txet" in result.stderr


def test_a_failing_stage_exits_1_naming_the_stage_and_the_item():
    result = cli("run", FAILING, "--input", '{"text": "ok bad fine"}')
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "stage 'checked' failed on word=1" in result.stderr
    assert "ValueError: cannot check 'bad'" in result.stderr


def test_a_failing_stage_with_events_ends_with_the_error_event_and_exits_1():
    result = cli("run", FAILING, "--events", "--input", '{"text": "ok bad fine"}')
    assert result.exit_code == 1
    events = ndjson(result.stdout)
    assert {"type": "done"} not in events
    error = events[-1]
    assert error["type"] == "error"
    assert error["stage"] == "checked"
    assert error["ancestry"] == {"word": 1}
    assert error["exc_type"] == "ValueError"
    assert "cannot check 'bad'" in error["error"]


# -- target forms ----------------------------------------------------------------------------


@pytest.fixture
def tests_on_path(monkeypatch):
    """``tests/`` on sys.path, so that ``pipelines.wordcount`` is an importable module."""
    monkeypatch.syspath_prepend(str(TESTS))
    yield
    for name in [m for m in sys.modules if m == "pipelines" or m.startswith("pipelines.")]:
        del sys.modules[name]


def test_target_file_collects_every_stage_of_the_file():
    result = cli("run", WORDCOUNT, "-i", '{"text": "x y"}')
    assert json.loads(result.stdout) == {"upper": ["X", "Y"], "total": 2}


def test_target_file_colon_name_takes_the_pipeline_object_in_the_file():
    result = cli("run", WORDCOUNT + ":shout", "-i", '{"text": "x y"}')
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"upper": ["X", "Y"]}  # `total` is not in `shout`
    compiled = cli("compile", WORDCOUNT + ":shout", "-f", "json")
    assert [s["name"] for s in json.loads(compiled.stdout)["stages"]] == ["words", "upper"]


def test_target_package_module_colon_name(tests_on_path):
    result = cli("run", "pipelines.wordcount:shout", "-i", '{"text": "x y"}')
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"upper": ["X", "Y"]}


def test_target_package_module_collects_every_stage(tests_on_path):
    result = cli("compile", "pipelines.wordcount", "-f", "json")
    assert result.exit_code == 0, result.output
    assert [s["name"] for s in json.loads(result.stdout)["stages"]] == ["words", "upper", "total"]


def test_target_module_that_is_not_importable_exits_2_with_a_hint():
    result = cli("compile", "no_such_package.app:pipeline")
    assert result.exit_code == 2
    assert "no_such_package" in result.stderr and "PYTHONPATH" in result.stderr


# -- the installed command -------------------------------------------------------------------


def _console_script() -> str:
    script = Path(sysconfig.get_path("scripts")) / "altoflow"
    if not script.exists():
        pytest.fail(f"the altoflow console script is not installed at {script}")
    return str(script)


def test_console_script_runs_a_package_module_target_in_a_subprocess():
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.run(
        [_console_script(), "run", "pipelines.wordcount:shout", "--events",
         "--input", '{"text": "one two"}'],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    events = ndjson(proc.stdout)
    assert events[-1] == {"type": "done"}
    assert [(e["ancestry"], e["value"]) for e in events[:-1]] == [
        ({"word": 0}, "ONE"), ({"word": 1}, "TWO")
    ]


def test_console_script_finds_a_module_target_in_the_current_directory():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [_console_script(), "compile", "pipelines.wordcount:shout", "-f", "json"],
        capture_output=True, text=True, timeout=60, env=env, cwd=TESTS,
    )
    assert proc.returncode == 0, proc.stderr


def test_serve_listen_is_the_replicas_address_and_host_port_stay_the_http_one(monkeypatch):
    # Nothing is started: the ingress and the HTTP server are replaced by recorders.
    import altoflow.server.served as served_mod
    import altoflow.server.shutdown as shutdown_mod

    seen: dict = {}

    class Ingress:
        def __init__(self, target, **kw):
            seen["ingress"] = kw

    monkeypatch.setattr(served_mod, "ServedIngress", Ingress)
    monkeypatch.setattr("altoflow.server.http.create_app",
                        lambda ingress, **kw: seen.update(app=kw) or ingress)
    monkeypatch.setattr(shutdown_mod, "serve_with_grace",
                        lambda app, ingress, **kw: seen.update(http=kw) or True)
    monkeypatch.setenv("ALTOFLOW_SECRET", "s3cret")
    result = cli("serve", WORDCOUNT, "--host", "127.0.0.2", "--port", "8123", "--listen", "0.0.0.0:7000")
    assert result.exit_code == 0, result.output
    assert (seen["http"]["host"], seen["http"]["port"]) == ("127.0.0.2", 8123)
    assert seen["http"]["grace"] == 30.0
    assert seen["ingress"]["listen"] == ("0.0.0.0", 7000)
    assert (seen["ingress"]["handshake_timeout"], seen["ingress"]["max_pending"],
            seen["ingress"]["max_connections"]) == (5.0, 64, 1024)
    assert seen["app"] == {"max_body": 1024 * 1024, "allowed_hosts": ["127.0.0.2"],
                           "admin_token": None}


def test_serve_passes_grace_and_the_tcp_caps_on(monkeypatch):
    import altoflow.server.served as served_mod
    import altoflow.server.shutdown as shutdown_mod

    seen: dict = {}
    monkeypatch.setattr(served_mod, "ServedIngress", lambda target, **kw: seen.update(ingress=kw))
    monkeypatch.setattr("altoflow.server.http.create_app", lambda ingress, **kw: ingress)
    monkeypatch.setattr(shutdown_mod, "serve_with_grace",
                        lambda app, ingress, **kw: seen.update(http=kw) or True)
    monkeypatch.setenv("ALTOFLOW_SECRET", "s3cret")
    result = cli("serve", WORDCOUNT, "--port", "8125", "--listen", "127.0.0.1:7002", "--grace", "2.5",
                 "--handshake-timeout", "1.5", "--max-pending", "8", "--max-connections", "8")
    assert result.exit_code == 0, result.output
    assert seen["http"]["grace"] == 2.5
    assert (seen["ingress"]["handshake_timeout"], seen["ingress"]["max_pending"],
            seen["ingress"]["max_connections"]) == (1.5, 8, 8)


def test_serve_exits_3_when_its_startup_fails(monkeypatch):
    # As uvicorn does: the lifespan's error (a replica that did not start) is logged above.
    import altoflow.server.served as served_mod
    import altoflow.server.shutdown as shutdown_mod

    monkeypatch.setattr(served_mod, "ServedIngress", lambda target, **kw: object())
    monkeypatch.setattr("altoflow.server.http.create_app", lambda ingress, **kw: ingress)
    monkeypatch.setattr(shutdown_mod, "serve_with_grace", lambda app, ingress, **kw: False)
    result = cli("serve", WORDCOUNT, "--port", "8126")
    assert result.exit_code == 3, result.output


def test_serve_allow_pickle_with_listen_is_refused_with_a_message(monkeypatch):
    monkeypatch.setenv("ALTOFLOW_SECRET", "s3cret")
    result = cli("serve", WORDCOUNT, "--allow-pickle", "--listen", "0.0.0.0:7000")
    assert result.exit_code == 2
    assert "--allow-pickle is for local sockets only" in result.output


# -- worker ----------------------------------------------------------------------------------

SLOW = str(PIPES / "slow.py")


@pytest.fixture
def tcp_router():
    """A real router listening for TCP replicas with the secret "s3cret", on its own loop."""
    import asyncio
    import threading

    from altoflow.compiler import load_target
    from altoflow.runtime.router import Router

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    router = Router(load_target(SLOW).compiled)
    port = asyncio.run_coroutine_threadsafe(router.listen_tcp("127.0.0.1", 0, b"s3cret"), loop).result(30)
    yield router, port
    asyncio.run_coroutine_threadsafe(router.close(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    loop.close()


def test_worker_with_the_wrong_secret_exits_1_with_one_line_naming_the_fix(tcp_router, monkeypatch):
    router, port = tcp_router
    monkeypatch.setenv("ALTOFLOW_SECRET", "guess")
    result = cli("worker", "--target", SLOW, "--stage", "slow", "--connect", f"127.0.0.1:{port}")
    assert result.exit_code == 1
    assert result.stdout == ""
    # The router runs in this process here, so its own log line is in the same stderr.
    ours = [line for line in result.stderr.splitlines() if " altoflow.router " not in line]
    assert len(ours) == 1, result.stderr
    assert ours[0].startswith(f"error: replica slow#0: the router at 127.0.0.1:{port} hung up")
    assert "share the secret" in ours[0]
    assert router.ready()["slow"] == 0


def test_worker_module_entry_is_the_same_command(tcp_router):
    # The supervisor starts local replicas as `python -m altoflow worker`.
    _, port = tcp_router
    env = {**os.environ, "ALTOFLOW_SECRET": "guess"}
    proc = subprocess.run(
        [sys.executable, "-m", "altoflow", "worker", "--target", SLOW, "--stage", "slow",
         "--slot", "1", "--connect", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: replica slow#1: the router at"), proc.stderr


def test_worker_of_an_unknown_stage_exits_1_listing_the_stages():
    result = cli("worker", "--target", SLOW, "--stage", "slwo", "--connect", "/nonexistent.sock")
    assert result.exit_code == 1
    assert "has no stage 'slwo'" in result.stderr and "items, slow, total" in result.stderr


def test_worker_over_tcp_without_a_secret_exits_1_naming_the_flag(monkeypatch):
    monkeypatch.delenv("ALTOFLOW_SECRET", raising=False)
    result = cli("worker", "--target", SLOW, "--stage", "slow", "--connect", "127.0.0.1:9")
    assert result.exit_code == 1
    assert "needs the shared secret (--secret-file PATH or ALTOFLOW_SECRET)" in result.stderr


def test_worker_with_no_router_there_exits_1_saying_so(tmp_path):
    result = cli("worker", "--target", SLOW, "--stage", "slow", "--connect", str(tmp_path / "router.sock"))
    assert result.exit_code == 1
    assert "cannot connect to the router at" in result.stderr and "altoflow serve" in result.stderr


def test_worker_of_a_target_that_does_not_load_exits_2(tmp_path):
    result = cli("worker", "--target", str(tmp_path / "nope.py"), "--stage", "x", "--connect", "/x.sock")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")


# -- a target that does not load, and serve options refused before anything starts -----------


@pytest.mark.parametrize(("source", "line", "words"), [
    pytest.param("from altoflow import stage\n\n\ndef a(q:\n    return q\n", 4,
                 ["SyntaxError", "'(' was never closed", "def a(q:"], id="syntax-error"),
    pytest.param("from altoflow import stage\n\n\n@stage(fanuot='x')\ndef a(q: str):\n    return q\n",
                 4, ["TypeError", "'fanuot'", "did you mean fanout=?", "@stage(fanuot='x')"],
                 id="misspelt-stage-keyword"),
    pytest.param("import json\nimport no_such_module_anywhere\n", 2,
                 ["ModuleNotFoundError", "no_such_module_anywhere"], id="failing-import"),
])
@pytest.mark.parametrize("command", ["compile", "run", "serve"])
def test_a_target_that_does_not_load_exits_2_with_its_file_and_line(tmp_path, source, line,
                                                                    words, command):
    app_py = tmp_path / "app.py"
    app_py.write_text(source)
    result = cli(command, str(app_py))
    assert result.exit_code == 2, result.output
    err = result.stderr
    assert f"{app_py}:{line}:" in err
    for w in words:
        assert w in err
    assert "Traceback" not in err and len(err.splitlines()) <= 5, err


def test_a_directory_target_exits_2_naming_a_file_to_give(tmp_path):
    result = cli("compile", str(tmp_path))
    assert result.exit_code == 2
    assert "is a directory" in result.stderr and str(tmp_path / "app.py") in result.stderr


@pytest.fixture
def no_start(monkeypatch):
    """``altoflow serve`` with nothing started: starting replicas or the HTTP server fails the test."""
    import altoflow.server.served as served_mod
    import altoflow.server.shutdown as shutdown_mod

    def refuse(*args, **kw):
        raise AssertionError("serve started something it should have refused first")

    monkeypatch.setattr(served_mod, "ServedIngress", refuse)
    monkeypatch.setattr(shutdown_mod, "serve_with_grace", refuse)


@pytest.mark.parametrize(("args", "words"), [
    (["--max-inflight", "0"], ["--max-inflight takes N >= 1", "not 0"]),
    (["--port", "70000"], ["--port takes a port from 1 to 65535, not 70000"]),
    (["--port", "-1"], ["--port takes a port from 1 to 65535, not -1"]),
    (["--listen", "0.0.0.0:99999"], ["--listen takes a port from 1 to 65535, not 99999"]),
    (["--max-body", "0"], ["--max-body takes a number of bytes >= 1"]),
    (["--max-buffered-mib", "0"], ["--max-buffered-mib takes MiB above 0", "not 0.0"]),
    (["--replay-limit", "-1"], ["--replay-limit takes 0 (no replay) or more inputs, not -1"]),
    (["--grace", "-1"], ["--grace takes seconds, 0 or more", "not -1.0"]),
    (["--grace", "nan"], ["--grace takes seconds, 0 or more", "not nan"]),
    (["--handshake-timeout", "0"], ["--handshake-timeout takes seconds above 0, not 0.0"]),
    (["--max-pending", "0"], ["--max-pending takes N >= 1", "not 0"]),
    (["--max-pending", "8", "--max-connections", "4"],
     ["--max-connections takes N >= --max-pending (8), not 4"]),
])
def test_serve_refuses_bad_options_in_one_line(no_start, monkeypatch, args, words):
    monkeypatch.setenv("ALTOFLOW_SECRET", "s3cret")
    result = cli("serve", WORDCOUNT, *args)
    assert result.exit_code == 2, result.output
    for w in words:
        assert w in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_on_a_port_in_use_exits_2_before_starting_replicas(no_start):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", WORDCOUNT, "--port", str(port))
    assert result.exit_code == 2, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "--port" in result.stderr


def test_serve_passes_max_body_and_allowed_hosts_to_the_app(monkeypatch):
    import altoflow.server.served as served_mod
    import altoflow.server.shutdown as shutdown_mod

    seen: dict = {}
    monkeypatch.setattr(served_mod, "ServedIngress", lambda target, **kw: object())
    monkeypatch.setattr("altoflow.server.http.create_app",
                        lambda ingress, **kw: seen.update(app=kw) or ingress)
    monkeypatch.setattr(shutdown_mod, "serve_with_grace", lambda app, ingress, **kw: True)
    result = cli("serve", WORDCOUNT, "--host", "0.0.0.0", "--port", "8124", "--max-body", "4096",
                 "--allowed-host", "api.example.com", "--allowed-host", "proxy")
    assert result.exit_code == 0, result.output
    assert seen["app"] == {"max_body": 4096, "allowed_hosts": ["api.example.com", "proxy"],
                           "admin_token": None}


def test_serve_admin_token_file_turns_the_admin_routes_on_and_an_empty_one_is_refused(
        monkeypatch, tmp_path):
    import altoflow.server.served as served_mod
    import altoflow.server.shutdown as shutdown_mod

    seen: dict = {}
    monkeypatch.setattr(served_mod, "ServedIngress", lambda target, **kw: object())
    monkeypatch.setattr("altoflow.server.http.create_app",
                        lambda ingress, **kw: seen.update(app=kw) or ingress)
    monkeypatch.setattr(shutdown_mod, "serve_with_grace", lambda app, ingress, **kw: True)
    token = tmp_path / "admin.token"
    token.write_text("t0ken\n")
    result = cli("serve", WORDCOUNT, "--port", "8125", "--admin-token-file", str(token))
    assert result.exit_code == 0, result.output
    assert seen["app"]["admin_token"] == "t0ken"
    token.write_text("\n")
    result = cli("serve", WORDCOUNT, "--port", "8125", "--admin-token-file", str(token))
    assert result.exit_code == 2
    assert f"--admin-token-file {token} is empty" in result.stderr
    result = cli("serve", WORDCOUNT, "--port", "8125", "--admin-token-file", str(tmp_path / "no"))
    assert result.exit_code == 2 and "cannot read --admin-token-file" in result.stderr


# -- version, tracebacks, logs ---------------------------------------------------------------

CHATTY = str(PIPES / "chatty.py")


def test_version_prints_the_version():
    from altoflow import __version__

    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout == f"altoflow {__version__}\n"


def test_run_traceback_prints_the_stages_traceback_from_the_users_frame():
    result = cli("run", CHATTY, "--traceback", "--input", '{"text": "ok bad"}')
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    at = lines.index("Traceback (most recent call last):")
    assert lines[at - 1].startswith("error: stage 'checked' failed on word=1")
    assert lines[at + 1].startswith(f'  File "{CHATTY}", line ') and lines[at + 1].endswith("in checked")
    assert lines[-1] == "ValueError: cannot check 'bad'"
    assert "altoflow/runtime" not in result.stderr


def test_run_without_traceback_says_how_to_see_it():
    result = cli("run", CHATTY, "--input", '{"text": "bad"}')
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr and "--traceback" in result.stderr


def test_run_log_format_json_writes_one_object_per_line():
    result = cli("run", CHATTY, "--log-format", "json", "--input", '{"text": "a b"}')
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert sorted(r["message"] for r in records) == ["checking a", "checking b"]
    assert {(r["level"], r["logger"]) for r in records} == {("WARNING", "chatty")}


def test_run_log_level_error_hides_the_warnings():
    result = cli("run", CHATTY, "--log-level", "error", "--input", '{"text": "a b"}')
    assert result.exit_code == 0 and result.stderr == ""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_logs_json_with_request_ids_and_replica_names_and_a_banner(tmp_path):
    import signal
    import time

    import httpx

    port = _free_port()
    err = tmp_path / "stderr"
    with open(err, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "altoflow", "serve", CHATTY, "--port", str(port),
             "--log-format", "json", "--replicas", "checked=2"],
            stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while "altoflow.serve" not in err.read_text():  # the banner's record: it is ready
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
        resp = httpx.post(f"http://127.0.0.1:{port}/v1/run", json={"text": "ok bad"},
                          headers={"X-Request-Id": "e2e-1"}, timeout=30)
        assert resp.headers["x-request-id"] == "e2e-1"
        assert json.loads(resp.text.splitlines()[-1])["request_id"] == "e2e-1"
        while '"altoflow.router"' not in err.read_text():
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    records = [json.loads(line) for line in err.read_text().splitlines()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    [banner] = [r for r in records if r["logger"] == "altoflow.serve"]
    assert banner["message"].startswith(f"altoflow ") and f"http://127.0.0.1:{port}" in banner["message"]
    assert "checked x2" in banner["message"] and "docs/serving.md" in banner["message"]
    assert f"page:   http://127.0.0.1:{port}/ " in banner["message"]
    replicas = {r.get("replica") for r in records if r["logger"] in ("altoflow.worker", "chatty")}
    assert {"words#0", "checked#0", "checked#1"} <= replicas
    [failure] = [r for r in records if r["logger"] == "altoflow.router" and r["level"] == "ERROR"]
    assert (failure["request_id"], failure["stage"], failure["ancestry"]) == ("e2e-1", "checked", {"word": 1})
    assert failure["traceback"].splitlines()[1].startswith(f'  File "{CHATTY}", line ')
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert [r["request_id"] for r in access] == ["e2e-1"]


# -- serve --ray -------------------------------------------------------------------------------

def test_serve_ray_passes_the_cluster_address_and_the_ca_to_the_ingress(monkeypatch, tmp_path):
    import altoflow.server.served as served_mod
    import altoflow.server.shutdown as shutdown_mod
    from altoflow.runtime.ray_placement import RayOptions

    seen: dict = {}
    monkeypatch.setattr("altoflow.runtime.ray_placement.import_ray", lambda: None)  # no Ray needed
    monkeypatch.setattr(served_mod, "ServedIngress", lambda target, **kw: seen.update(ingress=kw))
    monkeypatch.setattr("altoflow.server.http.create_app", lambda ingress, **kw: ingress)
    monkeypatch.setattr(shutdown_mod, "serve_with_grace", lambda app, ingress, **kw: True)
    monkeypatch.delenv("ALTOFLOW_SECRET", raising=False)
    result = cli("serve", WORDCOUNT, "--port", "8127", "--ray", "--ray-address", "head:6379")
    assert result.exit_code == 0, result.output
    assert seen["ingress"]["ray"] == RayOptions(address="head:6379")
    assert seen["ingress"]["listen"] is None and seen["ingress"]["secret"] == b""  # both made later

    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setattr("altoflow.runtime.tls.server_context", lambda cert, key: "tls")
    result = cli("serve", WORDCOUNT, "--port", "8127", "--ray", "--tls-cert", str(ca),
                 "--tls-key", str(ca))
    assert result.exit_code == 0, result.output
    assert seen["ingress"]["ray"] == RayOptions(tls_ca="-----BEGIN CERTIFICATE-----\n")
    assert seen["ingress"]["tls"] == "tls"


@pytest.mark.parametrize(("args", "words"), [
    (["--tls-ca", "ca.pem"], ["serve's --tls-ca is the CA its Ray actors trust: add --ray"]),
    (["--ray", "--allow-pickle"], ["--allow-pickle is for local sockets only", "with --ray"]),
])
def test_serve_ray_refuses_what_cannot_work_in_one_line(no_start, monkeypatch, args, words):
    monkeypatch.setattr("altoflow.runtime.ray_placement.import_ray", lambda: None)
    result = cli("serve", WORDCOUNT, *args)
    assert result.exit_code == 2, result.output
    for w in words:
        assert w in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_ray_without_ray_installed_says_what_to_install(no_start, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = cli("serve", WORDCOUNT, "--ray")
    assert result.exit_code == 2, result.output
    assert "--ray needs Ray on this machine and every node: pip install 'altoflow[ray]'" in result.stderr
