"""The vLLM and SGLang adapters, on fakes that follow the libraries' real APIs.

vLLM and SGLang need a GPU, so these tests drive the adapters with stand-ins written from the
pinned versions' source (vLLM 0.33.0 ``vllm/v1/engine/async_llm.py``, SGLang 0.5.23
``python/sglang/srt/entrypoints/engine.py`` and ``managers/tokenizer_manager.py``): they check
the adapters' own logic (deltas, chat templates, parameter names, aborts, errors), not the
engines.
"""

from __future__ import annotations

import asyncio
import enum
import sys
import types
from dataclasses import dataclass, field

import anyio
import pytest
from lmfakes import TIMEOUT

from altoflow.lm import EngineNotInstalledError, LlamaCppLM, LMResponseError, SGLangLM, VllmLM

pytestmark = pytest.mark.anyio


# -- missing libraries -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "module", "extra"),
    [
        (VllmLM, "vllm", "vllm"),
        (SGLangLM, "sglang", "sglang"),
        (LlamaCppLM, "llama_cpp", "llamacpp"),
    ],
)
def test_a_missing_library_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, engine: type, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(EngineNotInstalledError) as info:
        engine("some-model")
    assert f"pip install 'altoflow[{extra}]'" in str(info.value)
    assert f"needs the '{module}' package" in str(info.value)


# -- vLLM --------------------------------------------------------------------------------------


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


class VLLMClientError(Exception):
    pass


class VLLMValidationError(VLLMClientError):  # not a ValueError, as in vLLM 0.33.0
    pass


class SamplingParams:
    def __init__(self, **kwargs: object) -> None:
        if kwargs.get("max_tokens") == 0:
            raise VLLMValidationError("max_tokens must be at least 1, got 0.")
        self.kwargs = kwargs


@dataclass
class CompletionOutput:
    text: str


@dataclass
class RequestOutput:
    outputs: list[CompletionOutput]
    finished: bool


class Tokenizer:
    def apply_chat_template(
        self, messages: list[dict], tokenize: bool, add_generation_prompt: bool
    ) -> str:
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


@dataclass
class FakeAsyncLLM:
    """``AsyncLLM.generate``/``abort``/``get_tokenizer`` as vLLM 0.33.0 has them."""

    deltas: list[str]
    requests: list[tuple] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    produced: int = 0

    async def generate(self, prompt, sampling_params, request_id):
        self.requests.append((prompt, sampling_params, request_id))
        try:
            for i, text in enumerate(self.deltas):
                await anyio.sleep(0)
                self.produced += 1
                yield RequestOutput([CompletionOutput(text)], finished=i == len(self.deltas) - 1)
        except (asyncio.CancelledError, GeneratorExit):
            await self.abort(request_id)  # what vLLM's generate does
            raise

    async def abort(self, request_id, internal: bool = False) -> None:
        self.aborted.append(request_id)

    def get_tokenizer(self) -> Tokenizer:
        return Tokenizer()


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    sampling_params = types.ModuleType("vllm.sampling_params")
    sampling_params.RequestOutputKind = RequestOutputKind  # type: ignore[attr-defined]
    exceptions = types.ModuleType("vllm.exceptions")
    exceptions.VLLMClientError = VLLMClientError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling_params)
    monkeypatch.setitem(sys.modules, "vllm.exceptions", exceptions)


async def test_vllm_streams_deltas_with_delta_output_kind(fake_vllm: None) -> None:
    engine = FakeAsyncLLM(["The", " Thames", "\nflows", ""])
    lm = VllmLM("qwen", engine=engine)
    with anyio.fail_after(TIMEOUT):
        assert [line async for line in lm.stream_lines("p", temperature=0, stop="###")] == [
            "The Thames",
            "flows",
        ]
    prompt, params, _ = engine.requests[0]
    assert prompt == "p"
    assert params.kwargs == {
        "max_tokens": 256,
        "output_kind": RequestOutputKind.DELTA,
        "stop": ["###"],
        "temperature": 0,
    }
    assert engine.aborted == []  # finished normally


async def test_vllm_chat_prompts_use_the_chat_template(fake_vllm: None) -> None:
    engine = FakeAsyncLLM(["ok"])
    lm = VllmLM("qwen", engine=engine)
    with anyio.fail_after(TIMEOUT):
        await lm.complete([{"role": "user", "content": "hi"}])
    assert engine.requests[0][0] == "<user>hi<assistant>"


async def test_vllm_leaving_early_aborts_the_request(fake_vllm: None) -> None:
    engine = FakeAsyncLLM(["a\n", "b\n", "c\n", "d\n"])
    lm = VllmLM("qwen", engine=engine)
    with anyio.fail_after(TIMEOUT):
        async with lm.stream_lines("p") as lines:
            async for _ in lines:
                break
    request_id = engine.requests[0][2]
    assert request_id.startswith("altoflow-")
    assert request_id in engine.aborted
    assert engine.produced == 1


async def test_vllm_cancelling_the_task_aborts_the_request(fake_vllm: None) -> None:
    class Slow(FakeAsyncLLM):
        async def generate(self, prompt, sampling_params, request_id):
            async for out in super().generate(prompt, sampling_params, request_id):
                yield out
                await anyio.sleep(3600)

    engine = Slow(["a", "b"])
    lm = VllmLM("qwen", engine=engine)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lm.complete, "p")
            while not engine.produced:
                await anyio.sleep(0.001)
            tg.cancel_scope.cancel()
    assert engine.aborted and set(engine.aborted) == {engine.requests[0][2]}


async def test_vllm_rejected_parameters_are_a_response_error(fake_vllm: None) -> None:
    lm = VllmLM("qwen", engine=FakeAsyncLLM(["x"]))
    with (
        anyio.fail_after(TIMEOUT),
        pytest.raises(
            LMResponseError,
            match="vLLM rejected the sampling parameters: max_tokens must be at least 1",
        ),
    ):
        await lm.complete("p", max_tokens=0)


def test_vllm_engine_and_engine_arguments_do_not_mix(fake_vllm: None) -> None:
    with pytest.raises(TypeError, match="either engine= or engine arguments"):
        VllmLM("qwen", engine=FakeAsyncLLM([]), gpu_memory_utilization=0.5)


# -- SGLang ------------------------------------------------------------------------------------


@dataclass
class FakeTokenizerManager:
    incremental_streaming_output: bool = False
    aborted: list[str] = field(default_factory=list)
    tokenizer: Tokenizer = field(default_factory=Tokenizer)

    def abort_request(self, rid: str = "", abort_all: bool = False) -> None:
        self.aborted.append(rid)


@dataclass
class FakeSGLangEngine:
    """``Engine.async_generate(stream=True)`` as in SGLang 0.5.23: dicts of text and meta_info."""

    pieces: list[str]
    incremental: bool = False
    error: dict | None = None
    calls: list[dict] = field(default_factory=list)
    produced: int = 0

    def __post_init__(self) -> None:
        self.tokenizer_manager = FakeTokenizerManager(self.incremental)

    async def async_generate(self, prompt=None, sampling_params=None, stream=False, rid=None):
        assert stream is True
        self.calls.append({"prompt": prompt, "sampling_params": sampling_params, "rid": rid})

        async def chunks():
            text = ""
            for i, piece in enumerate(self.pieces):
                await anyio.sleep(0)
                self.produced += 1
                text += piece
                last = i == len(self.pieces) - 1
                finish = (self.error or {"type": "stop"}) if last else None
                yield {
                    "text": piece if self.incremental else text,
                    "meta_info": {"finish_reason": finish},
                }

        return chunks()


@pytest.mark.parametrize("incremental", [False, True])
async def test_sglang_yields_deltas_whether_its_chunks_are_cumulative_or_not(
    incremental: bool,
) -> None:
    engine = FakeSGLangEngine(["The", " Thames\nfl", "ows"], incremental=incremental)
    lm = SGLangLM("qwen", engine=engine)
    with anyio.fail_after(TIMEOUT):
        assert [d async for d in lm.stream("p", seed=3, top_k=20)] == ["The", " Thames\nfl", "ows"]
    assert engine.calls[0]["sampling_params"] == {
        "max_new_tokens": 256,
        "sampling_seed": 3,
        "top_k": 20,
    }
    assert engine.tokenizer_manager.aborted == []


async def test_sglang_leaving_early_aborts_the_request() -> None:
    engine = FakeSGLangEngine(["a\n", "b\n", "c\n"])
    lm = SGLangLM("qwen", engine=engine)
    with anyio.fail_after(TIMEOUT):
        async with lm.stream_lines([{"role": "user", "content": "hi"}]) as lines:
            async for _ in lines:
                break
    assert engine.calls[0]["prompt"] == "<user>hi<assistant>"
    assert engine.tokenizer_manager.aborted == [engine.calls[0]["rid"]]
    assert engine.produced == 1


async def test_sglang_abort_finish_reason_is_a_response_error() -> None:
    engine = FakeSGLangEngine(
        ["a"], error={"type": "abort", "status_code": 400, "message": "prompt too long"}
    )
    lm = SGLangLM("qwen", engine=engine)
    with (
        anyio.fail_after(TIMEOUT),
        pytest.raises(
            LMResponseError, match="SGLang aborted request altoflow-.*: prompt too long"
        ) as info,
    ):
        await lm.complete("p")
    assert info.value.status == 400
