"""GPUs without Ray: each local replica of a stage with ``gpus=`` gets devices of its own
(``CUDA_VISIBLE_DEVICES``), and a pipeline that needs more GPUs than the machine has is refused
before anything starts. No GPU is needed: ``ALTOFLOW_GPUS`` stands in for the machine's."""

from __future__ import annotations

import asyncio
import os
import stat
import textwrap

import pytest

from altoflow.compiler import load_target
from altoflow.runtime.gpus import Gpus, GpuShortage, assign_gpus, detect_gpus
from altoflow.runtime.supervisor import Supervisor


def _plan(tmp_path, source: str):
    app = tmp_path / "gpuapp.py"
    app.write_text(textwrap.dedent(source))
    return str(app), load_target(str(app)).compiled


TWO_LMS = """
    import os
    from altoflow import stage

    @stage(replicas=2, gpus=1)
    def lm(x: int) -> str:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "unset")

    @stage(replicas=3, gpus=0.5)
    def embed(x: int) -> str:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "unset")

    @stage(gpus=2)
    def big(x: int) -> str:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "unset")

    @stage
    def cpu(x: int) -> int:
        return x
"""


def test_whole_gpus_are_given_first_then_fractions_share_devices(tmp_path):
    _, compiled = _plan(tmp_path, TWO_LMS)
    got = assign_gpus(compiled.plan.stages, Gpus(("0", "1", "2", "3", "4", "5"), "test"))
    assert got == {("lm", 0): ("0",), ("lm", 1): ("1",), ("big", 0): ("2", "3"),
                   ("embed", 0): ("4",), ("embed", 1): ("4",), ("embed", 2): ("5",)}
    assert ("cpu", 0) not in got


def test_too_few_gpus_is_refused_naming_the_stages_and_the_fix(tmp_path):
    _, compiled = _plan(tmp_path, TWO_LMS)
    with pytest.raises(GpuShortage) as info:
        assign_gpus(compiled.plan.stages, Gpus(("0", "1", "2"), "ALTOFLOW_GPUS=0,1,2"))
    message = str(info.value)
    assert message.startswith("the pipeline needs 5.5 GPUs for its replicas, lm x2 (gpus=1 each), "
                              "embed x3 (gpus=0.5 each), big x1 (gpus=2 each), and this machine "
                              "has 3 (ALTOFLOW_GPUS=0,1,2)")
    assert "--remote" in message and "--ray" in message and "--replicas" in message


def test_more_than_one_gpu_must_be_a_whole_number(tmp_path):
    _, compiled = _plan(tmp_path, """
        from altoflow import stage

        @stage(gpus=1.5)
        def lm(x: int) -> int:
            return x
    """)
    with pytest.raises(ValueError, match=r"stage 'lm' \(.*gpuapp.py:\d+\) has gpus=1.5: .* write gpus=2"):
        assign_gpus(compiled.plan.stages, Gpus(("0", "1"), "test"))


def test_the_machines_gpus_come_from_the_override_cuda_visible_devices_or_nvidia_smi(
        tmp_path, monkeypatch):
    monkeypatch.setenv("ALTOFLOW_GPUS", "0,1, 2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert detect_gpus() == Gpus(("0", "1", "2"), "ALTOFLOW_GPUS=0,1, 2")
    monkeypatch.delenv("ALTOFLOW_GPUS")
    assert detect_gpus().devices == ("5",)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # CUDA's "no GPU"
    assert detect_gpus().devices == ()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-a)'\n"
                   "echo 'GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-b)'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert detect_gpus() == Gpus(("0", "1"), "nvidia-smi -L")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert detect_gpus() == Gpus((), "no nvidia-smi on PATH")


def test_each_served_replica_sees_only_its_own_devices_and_keeps_them_after_a_restart(
        tmp_path, monkeypatch):
    monkeypatch.setenv("ALTOFLOW_GPUS", "0,1,2,3")
    target, compiled = _plan(tmp_path, """
        import os
        from altoflow import stage

        @stage(replicas=2, gpus=1, concurrency=1)
        def lm(x: int) -> str:
            return os.environ.get("CUDA_VISIBLE_DEVICES", "unset")

        @stage
        def cpu(x: int) -> str:
            return os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    """)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "what-the-server-had")

    async def main():
        async with Supervisor(compiled, target) as sup:
            await sup.wait_ready()
            assert sup.devices == {("lm", 0): ("0",), ("lm", 1): ("1",)}

            async def seen():
                results = await asyncio.gather(*(_values(sup.router.submit({"x": i}))
                                                 for i in range(12)))
                return {r["lm"] for r in results}, {r["cpu"] for r in results}

            first = await seen()
            sup.kill("lm", 1)
            await asyncio.sleep(0.5)
            await sup.wait_ready()
            return first, await seen()

    (lm, cpu), (lm_after, _) = asyncio.run(main())
    assert lm <= {"0", "1"} and lm_after <= {"0", "1"}  # never both, never another one
    assert cpu == {"what-the-server-had"}  # a stage without gpus= keeps the server's environment


async def _values(handle) -> dict:
    return {e.stage: e.value async for e in handle if e.type == "output"}


def test_serve_refuses_at_start_a_pipeline_that_needs_more_gpus_than_there_are(
        tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from altoflow.cli import app

    target, _ = _plan(tmp_path, TWO_LMS)
    monkeypatch.setenv("ALTOFLOW_GPUS", "0")
    result = CliRunner().invoke(app, ["serve", target, "--port", "8197"])
    assert result.exit_code == 2, result.output
    assert "the pipeline needs 5.5 GPUs" in result.stderr
    assert "this machine has 1 (ALTOFLOW_GPUS=0)" in result.stderr


def test_a_stage_with_gpus_cannot_be_inline_and_inline_all_leaves_it_a_process(tmp_path, monkeypatch):
    monkeypatch.setenv("ALTOFLOW_GPUS", "0,1,2,3,4,5")
    target, compiled = _plan(tmp_path, TWO_LMS)
    with pytest.raises(ValueError, match="lm: a stage with gpus= runs its replicas as processes"):
        Supervisor(compiled, target, inline=frozenset({"lm", "cpu"}))

    async def main():
        async with Supervisor(compiled, target, inline=frozenset({"all"}),
                              replicas={"lm": 1, "embed": 1}) as sup:
            await sup.wait_ready()
            return sup.inline, {c.stage for c in sup.children}

    inline, processes = asyncio.run(main())
    assert inline == {"cpu"} and processes == {"lm", "embed", "big"}
