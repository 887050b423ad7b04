"""Every snippet and command in README.md and docs/ runs, and shown output is what you get.

- ```python blocks run in order, one namespace per file (so later blocks see earlier ones);
- a ```mermaid block is compared with the rendering of the `pipeline` defined before it;
- ```console blocks hold `$ command` lines, each followed by the output it must print (or by
  nothing, when only its success is checked);
- ```bash blocks are README's set-up commands: their `pip install` part is what this test run
  was installed with, so only the rest runs here: the server is started as that install
  would run it (without the `colbert` extra, so the claim verifier ranks in BM25 order), asked
  README's request, and stopped with Ctrl-C (the test command itself is what .ci/run runs, not run again
  from inside the tests). Elsewhere in docs/, ```bash blocks are commands that need a server
  and are not run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)


def _blocks(path: Path) -> list[tuple[str, str]]:
    return FENCE.findall(path.read_text())


def _run(command: str) -> subprocess.CompletedProcess:
    env_bin = str(Path(sys.executable).parent)
    return subprocess.run(
        ["bash", "-c", f'export PATH="{env_bin}:$PATH"; {command}'],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_snippets_run(path: Path) -> None:
    from altoflow.compiler.render import to_mermaid

    namespace: dict = {"__name__": f"docs_{path.stem}"}
    for lang, body in _blocks(path):
        if lang == "python":
            exec(compile(body, f"{path.name} snippet", "exec"), namespace)
        elif lang == "mermaid" and "pipeline" in namespace:
            assert body == to_mermaid(namespace["pipeline"].compiled.plan)
        elif lang == "console":
            for command, expected in _commands(body):
                proc = _run(command)
                assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
                if expected:
                    got = [line.rstrip() for line in proc.stdout.rstrip("\n").splitlines()]
                    assert got == expected, f"output of {command!r} differs from {path.name}"
    

def _commands(body: str) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for line in body.rstrip("\n").splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line.rstrip())
    return out


def test_readme_setup_commands() -> None:
    blocks = [body.strip() for lang, body in _blocks(ROOT / "README.md") if lang == "bash"]
    assert len(blocks) == 2, "README.md has exactly two set-up commands"
    main, tests = blocks
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines(), ".ci/run must run README's test command"
    install, _, rest = main.partition(" && ")
    assert shlex.split(install)[:2] == ["pip", "install"] and rest
    argv = shlex.split(rest)
    assert argv[:2] == ["altoflow", "serve"], "the main job serves the example"
    port = _free_port()
    argv[argv.index("--port") + 1] = str(port)
    # README's install has no colbert extra: the app then ranks in BM25 order, so this one must.
    env = {**os.environ, "ALTOFLOW_RERANKER": "bm25"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "altoflow"), *argv[1:]], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, server)
        # README's request, as curl would send it (curl itself may not be installed).
        curl = next(body for lang, body in _blocks(ROOT / "README.md") if lang == "console")
        argv = shlex.split(curl.strip())
        data = argv[-1]
        if data.startswith("@"):  # curl's -d @file sends the file
            data = (ROOT / data[1:]).read_text()
        headers = dict(argv[i + 1].split(": ", 1) for i, a in enumerate(argv) if a == "-H")
        resp = httpx.post(f"{url}/v1/run", content=data, headers=headers, timeout=60)
        events = [json.loads(line) for line in resp.text.splitlines()]
        assert events[-1] == {"type": "done", "request_id": resp.headers["x-request-id"]}
        assert any(e["type"] == "output" and e["stage"] == "report" for e in events)
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C: a clean shutdown, replicas included
        out, _ = server.communicate(timeout=30)
    assert server.returncode == 0, out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen) -> None:
    for _ in range(600):
        if server.poll() is not None:
            raise AssertionError(f"altoflow serve exited: {server.stdout.read()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).json()["status"] == "ok":
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError("altoflow serve did not become healthy in 60 s")


# -- docs/architecture.md: the public contract, as the code has it -----------------------------

ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _contract() -> str:
    text = ARCHITECTURE.read_text()
    return text[text.index("## The public contract"):text.index("## Where a change goes")]


def test_the_readme_links_the_architecture_page() -> None:
    assert "(docs/architecture.md)" in (ROOT / "README.md").read_text()


def test_contract_imports_are_public_names() -> None:
    import altoflow

    line = re.search(r"`from altoflow import ([^`]+)`", _contract())
    assert line is not None
    names = [n.strip() for n in line.group(1).split(",")]
    assert names == ["stage", "ops", "Pipeline", "run", "Client", "Result", "DROP", "CompileError",
                     "StageError"]
    assert set(names) <= set(altoflow.__all__)
    # The extra names the page lists are exactly the rest of __all__.
    more = _contract().split("lists these and a few more:")[1].split(")")[0]
    listed = set(re.findall(r"`(\w+)`", more)) - {"CompileError"}  # "the `CompileError` subclasses"
    assert listed == set(altoflow.__all__) - set(names)


def test_contract_stage_keywords_are_the_decorators() -> None:
    import inspect

    from altoflow import stage

    line = re.search(r"`@stage\(([^`]+)\)`", _contract())
    assert line is not None
    listed = [k.strip().rstrip("=") for k in line.group(1).replace("\n", " ").split(",") if k.strip()]
    params = inspect.signature(stage).parameters
    assert listed == [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY]


def test_contract_operator_identities_are_the_operators() -> None:
    from altoflow import ops

    made = {"sum": ops.sum(), "count": ops.count(), "min": ops.min(), "max": ops.max(),
            "mean": ops.mean(), "collect": ops.collect(), "concat": ops.concat(),
            "topk": ops.topk(3), "filter": ops.filter(bool), "first": ops.first(),
            "any": ops.any(), "all": ops.all(), "reduce": ops.reduce(lambda a, b: a + b, "initial")}
    text = " ".join(_contract().split())
    order = re.findall(r"`ops\.(\w+)", text.split("Operators:")[1].split("; a bare operator")[0])
    assert order == list(made) and set(order) == {n for n in ops.__all__ if n.islower()}
    shown = re.search(r"in that order: (.+?)\.\s", text)
    assert shown is not None
    identities = [v.strip().strip("`") for v in shown.group(1).split(",")]
    expected = [repr(op.result(op.create())) if name != "reduce" else "initial"
                for name, op in made.items()]
    assert identities == [e.replace("'", '"') for e in expected]


OUTSIDE = re.compile(r"design section|design\.md|STYLE\.md|perf-notes|\bissue \d|shared/|/work/")


# benchmarks/frames.py is left to the change that moves the wire code, which rewrites it.
@pytest.mark.parametrize("path", [*DOCS, *sorted((ROOT / "examples").glob("*.py")),
                                  *sorted(p for p in (ROOT / "benchmarks").rglob("*.py")
                                          if p.name != "frames.py")],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_prose_stands_on_its_own(path: Path) -> None:
    # Docs, examples and benchmarks say things themselves, or point at docs/ in this repository.
    hits = [f"{path.name}:{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1)
            if OUTSIDE.search(line)]
    assert hits == []
