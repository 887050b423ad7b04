"""The LM section of docs/integrations.md: its snippets compile, and those that can run here do.

Its ```python blocks (the simulated engine) are run by tests/test_docs.py with the rest of the
docs. The ```py blocks need a server, llama.cpp or a GPU: the OpenAI one runs here against
``altoflow sim-lm``, the llama.cpp one in the ``llamacpp`` tests, and the vLLM and SGLang ones
(which need a GPU) are only compiled.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from lmfakes import ROOT, TIMEOUT

from altoflow.lm import SimulatedLM

DOC = ROOT / "docs" / "integrations.md"
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)


def lm_section() -> str:
    text = DOC.read_text()
    start = text.index("## Language models")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def blocks(lang: str) -> list[str]:
    return [body for fence, body in FENCE.findall(lm_section()) if fence == lang]


def snippet(engine: str) -> str:
    """The ```py block that builds ``engine``."""
    found = [body for body in blocks("py") if f"{engine}(" in body]
    assert len(found) == 1, f"expected one ```py snippet using {engine} in {DOC}"
    return found[0]


@pytest.mark.parametrize("engine", ["OpenAILM", "LlamaCppLM", "VllmLM", "SGLangLM"])
def test_each_engine_has_a_snippet_that_compiles(engine: str) -> None:
    compile(snippet(engine), f"{DOC.name} ({engine})", "exec")
    assert "from altoflow import stage" in snippet(engine)


def test_each_engine_names_its_install_extra() -> None:
    section = lm_section()
    for extra in ("llamacpp", "vllm", "sglang"):
        assert f"pip install 'altoflow[{extra}]'" in section
    # The simulated and HTTP engines run on core dependencies: no extra of theirs to name.
    for gone in ("lm", "sim"):
        assert f"altoflow[{gone}]" not in section


@pytest.mark.anyio
async def test_the_openai_snippet_runs_against_sim_lm(sim_server: tuple[str, Path]) -> None:
    base, _ = sim_server
    code = snippet("OpenAILM")
    assert '"http://127.0.0.1:8001/v1"' in code
    namespace: dict = {}
    exec(
        compile(code.replace("http://127.0.0.1:8001/v1", base), "integrations.md", "exec"),
        namespace,
    )
    claim = "The Thames flows through London."
    with anyio.fail_after(TIMEOUT):
        lines = [line async for line in namespace["queries"](claim)]
        await namespace["lm"].aclose()
    prompt = [
        {"role": "system", "content": "Write search queries, one per line."},
        {"role": "user", "content": f"Write search queries to verify: {claim}"},
    ]
    assert lines == SimulatedLM(seed=7).plan(prompt, temperature=0).text.split("\n")


def test_the_documented_server_command_knows_its_options() -> None:
    commands = "\n".join(blocks("bash"))
    assert "python -m altoflow.lm.sim_server --port 8001" in commands
    proc = subprocess.run(
        [sys.executable, "-m", "altoflow.lm.sim_server", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for option in (
        "--port",
        "--time-scale",
        "--ttft",
        "--time-per-token",
        "--batch-slowdown",
        "--seed",
    ):
        assert option in proc.stdout
    assert "SIMULATED" in proc.stdout


def test_sim_lm_command_registers_as_a_cli_verb() -> None:
    # The real `altoflow` app: the verb the docs tell users to type.
    from typer.testing import CliRunner

    from altoflow.cli import app

    runner = CliRunner()
    shown = runner.invoke(app, ["sim-lm", "--help"])
    assert shown.exit_code == 0, shown.output
    assert "SIMULATED LM" in shown.output and "--time-scale" in shown.output
    refused = runner.invoke(app, ["sim-lm", "--time-per-token", "-1"])
    assert refused.exit_code == 2
    assert "TimingModel.time_per_token_s must be a finite number >= 0" in refused.output
