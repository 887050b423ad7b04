"""Every snippet and command in README.md and docs/ runs, and shown output is what you get.

- ```python blocks run in order, one namespace per file (so later blocks see earlier ones);
- a ```mermaid block is compared with the rendering of the `pipeline` defined before it;
- ```console blocks hold `$ command` lines, each followed by the output it must print (or by
  nothing, when only its success is checked);
- ```bash blocks are README's set-up commands: their `pip install` part is what this test run
  was installed with, so only the rest runs here (and the test command itself is what .ci/run
  runs, not run again from inside the tests).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

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
    ran = 0
    for lang, body in _blocks(path):
        if lang == "python":
            exec(compile(body, f"{path.name} snippet", "exec"), namespace)
            ran += 1
        elif lang == "mermaid" and "pipeline" in namespace:
            assert body == to_mermaid(namespace["pipeline"].compiled.plan)
            ran += 1
        elif lang == "console":
            for command, expected in _commands(body):
                proc = _run(command)
                assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
                if expected:
                    got = [line.rstrip() for line in proc.stdout.rstrip("\n").splitlines()]
                    assert got == expected, f"output of {command!r} differs from {path.name}"
                ran += 1
    if path.name != "README.md":
        assert ran, f"{path.name} has nothing to check"


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
    proc = _run(rest)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
