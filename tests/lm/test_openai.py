"""The OpenAI-compatible client against ``altoflow sim-lm`` (a real process) and scripted faults."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest
from lmfakes import TIMEOUT, free_port

from altoflow.lm import (
    JsonListError,
    LMConnectionError,
    LMProtocolError,
    LMResponseError,
    LMTimeoutError,
    OpenAILM,
    SimulatedLM,
)
from altoflow.lm.openai import SSEDecoder

pytestmark = pytest.mark.anyio

CLAIMS_PROMPT = "Extract the factual claims, one per line, from: The Thames flows through London."
CHAT = [
    {"role": "system", "content": "You write search queries, one per line."},
    {"role": "user", "content": "Write search queries to verify: The Thames flows through London."},
]


def oracle() -> SimulatedLM:
    """The same engine the servers run (seed 7), to know what they will write."""
    return SimulatedLM(seed=7)


# -- against the simulated server --------------------------------------------------------------


async def test_complete_and_stream_a_completion_prompt(sim_server: tuple[str, Path]) -> None:
    base, _ = sim_server
    expected = oracle().plan(CLAIMS_PROMPT)
    async with OpenAILM(base) as lm:
        with anyio.fail_after(TIMEOUT):
            assert await lm.complete(CLAIMS_PROMPT) == expected.text
            deltas = [d async for d in lm.stream(CLAIMS_PROMPT)]
    assert deltas == list(expected.tokens)
    assert lm.model == "altoflow-simulated"  # found through GET /v1/models


async def test_stream_lines_of_a_chat_prompt(sim_server: tuple[str, Path]) -> None:
    base, _ = sim_server
    async with OpenAILM(base, model="altoflow-simulated") as lm:
        with anyio.fail_after(TIMEOUT):
            lines = [line async for line in lm.stream_lines(CHAT)]
    expected = oracle().plan(CHAT)
    assert expected.shape == "queries"
    assert lines == expected.text.split("\n")


async def test_per_call_sampling_reaches_the_server(sim_server: tuple[str, Path]) -> None:
    base, _ = sim_server
    async with OpenAILM(base) as lm:
        with anyio.fail_after(TIMEOUT):
            text = await lm.complete(CLAIMS_PROMPT, max_tokens=4, seed=11, stop=["zzz"])
    assert text == oracle().plan(CLAIMS_PROMPT, max_tokens=4, seed=11).text
    assert len(text.split()) == 4


async def test_stream_json_list_from_the_server(sim_server: tuple[str, Path]) -> None:
    base, _ = sim_server
    prompt = "Extract the claims as a JSON list of strings from: The Thames flows through London."
    async with OpenAILM(base) as lm:
        with anyio.fail_after(TIMEOUT):
            elements = [e async for e in lm.stream_json_list(prompt)]
    assert elements == json.loads(oracle().plan(prompt).text)


async def test_many_concurrent_streams_share_the_pool(sim_server: tuple[str, Path]) -> None:
    base, _ = sim_server
    prompts = [f"{CLAIMS_PROMPT} {i}" for i in range(24)]
    got: dict[str, str] = {}
    async with OpenAILM(base, max_connections=8) as lm:

        async def one(p: str) -> None:
            got[p] = await lm.complete(p)

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                for p in prompts:
                    tg.start_soon(one, p)
    sim = oracle()
    assert got == {p: sim.plan(p).text for p in prompts}


async def stats(base: str) -> dict:
    async with httpx.AsyncClient() as client:
        return (await client.get(base.removesuffix("/v1") + "/altoflow/stats")).json()


async def wait_for_abort(base: str, aborted_before: int) -> dict:
    while True:
        now = await stats(base)
        if now["aborted"] > aborted_before and now["running"] == 0:
            return now
        await anyio.sleep(0.01)


# A prompt whose simulated answer is long (302 words at seed 7: 15 s at 50 ms a word), so that a
# stopped generation is told apart from a finished one by a wide margin.
LONG_PROMPT = "Tell me the long history of the river Thames, part 148."


async def test_leaving_a_stream_early_aborts_the_generation_on_the_server(
    slow_sim_server: tuple[str, Path],
) -> None:
    base, _ = slow_sim_server
    planned = len(oracle().plan(LONG_PROMPT, max_tokens=None).tokens)
    assert planned == 302
    async with OpenAILM(base) as lm:
        with anyio.fail_after(TIMEOUT):
            before = await stats(base)
            async with lm.stream(LONG_PROMPT, max_tokens=None) as deltas:
                got = [await deltas.__anext__() for _ in range(3)]
            after = await wait_for_abort(base, before["aborted"])
    assert got == list(oracle().plan(LONG_PROMPT).tokens[:3])
    generated = after["tokens"] - before["tokens"]
    assert 3 <= generated < planned  # the server stopped writing soon after the client left


async def test_cancelling_the_task_aborts_the_generation_on_the_server(
    slow_sim_server: tuple[str, Path],
) -> None:
    base, _ = slow_sim_server
    lines: list[str] = []
    async with OpenAILM(base) as lm:
        with anyio.fail_after(TIMEOUT):
            before = await stats(base)
            async with anyio.create_task_group() as tg:

                async def consume() -> None:
                    async for delta in lm.stream(LONG_PROMPT, max_tokens=None):
                        lines.append(delta)

                tg.start_soon(consume)
                while len(lines) < 2:
                    await anyio.sleep(0.005)
                tg.cancel_scope.cancel()
            after = await wait_for_abort(base, before["aborted"])
            # The client still works after a cancelled stream.
            assert await lm.complete("Who built Tower Bridge?", max_tokens=2)
    assert after["tokens"] - before["tokens"] < len(
        oracle().plan(LONG_PROMPT, max_tokens=None).tokens
    )


async def test_the_server_says_it_is_simulated(sim_server: tuple[str, Path]) -> None:
    base, log = sim_server
    async with httpx.AsyncClient() as client:
        with anyio.fail_after(TIMEOUT):
            models = await client.get(f"{base}/models")
            whole = await client.post(
                f"{base}/chat/completions",
                json={"model": "gpt-4o", "messages": CHAT, "max_tokens": 3},
            )
            streamed = await client.post(
                f"{base}/completions",
                json={
                    "prompt": "hi",
                    "max_tokens": 2,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                },
            )
    assert [m["id"] for m in models.json()["data"]] == ["altoflow-simulated"]
    body = whole.json()
    assert whole.headers["x-altoflow-simulated"] == "true"
    assert body["model"] == body["system_fingerprint"] == "altoflow-simulated"
    assert body["choices"][0]["message"]["content"] == oracle().plan(CHAT, max_tokens=3).text
    assert body["usage"]["completion_tokens"] == 3
    assert streamed.headers["x-altoflow-simulated"] == "true"
    events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["model"] == "altoflow-simulated" for c in chunks)
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert "SIMULATED language model" in log.read_text()


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/completions",
            {"prompt": "x", "temperature": 7},
            "temperature must be in \\[0.0, 2.0\\]",
        ),
        ("/completions", {"prompt": "x", "n": 3}, "n: Input should be 1"),
        ("/completions", {"prompt": ["a", "b"]}, "only one prompt per request"),
        ("/chat/completions", {"messages": []}, "messages: List should have at least 1 item"),
        ("/completions", {}, "prompt: Field required"),
        ("/completions", [1, 2], "the request body: Input should be a valid dictionary"),
    ],
)
async def test_the_server_rejects_bad_requests_in_openai_form(
    sim_server: tuple[str, Path], path: str, body: dict, message: str
) -> None:
    base, _ = sim_server
    async with httpx.AsyncClient() as client:
        with anyio.fail_after(TIMEOUT):
            response = await client.post(base + path, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert re.search(message, response.json()["error"]["message"])


# -- errors from real servers ------------------------------------------------------------------


async def test_a_bad_request_error_carries_the_servers_message(
    sim_server: tuple[str, Path],
) -> None:
    base, _ = sim_server
    async with OpenAILM(base, extra_body={"n": 2}) as lm:
        with anyio.fail_after(TIMEOUT), pytest.raises(LMResponseError) as info:
            await lm.complete("x")
    assert info.value.status == 400
    assert info.value.url == f"{base}/completions"
    assert f"{base}/completions answered 400 Bad Request: n: Input should be 1" in str(info.value)
    assert "rejected the request's parameters" in str(info.value)


async def test_a_missing_v1_is_pointed_out(sim_server: tuple[str, Path]) -> None:
    base, _ = sim_server
    root = base.removesuffix("/v1")
    async with OpenAILM(root, model="altoflow-simulated") as lm:
        with anyio.fail_after(TIMEOUT), pytest.raises(LMResponseError) as info:
            await lm.complete("x")
    assert info.value.status == 404
    assert f"try base_url='{root}/v1'" in str(info.value)


async def test_nothing_listening_is_a_connection_error_that_says_so() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    async with OpenAILM(url, model="m") as lm:
        with anyio.fail_after(TIMEOUT), pytest.raises(LMConnectionError) as info:
            await lm.complete("x")
    assert f"could not connect to {url}/completions" in str(info.value)
    assert "Is the server running" in str(info.value)


# -- scripted faults (httpx.MockTransport: no network) ----------------------------------------


def sse(*events: str) -> bytes:
    return "".join(f"data: {e}\n\n" for e in events).encode()


def chunk(text: str, finish: str | None = None) -> str:
    return json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": finish}]})


def scripted(handler: Callable[[httpx.Request], httpx.Response], **kwargs) -> OpenAILM:
    return OpenAILM(
        "http://engine.test/v1", model="m", transport=httpx.MockTransport(handler), **kwargs
    )


def event_stream(body: bytes, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(
        status, content=body, headers={"content-type": "text/event-stream"}
    )


async def test_sse_comments_multiline_data_and_crlf() -> None:
    body = (
        b": keep-alive\r\n\r\n"
        b'data: {"choices": [{"text": "a\\nb",\r\ndata:  "finish_reason": null}]}\r\n\r\n'
        b"event: message\r\n" + sse(chunk("c", "stop"), "[DONE]")
    )
    lm = scripted(event_stream(body))
    with anyio.fail_after(TIMEOUT):
        assert [line async for line in lm.stream_lines("p")] == ["a", "bc"]


def test_sse_decoder_delivers_an_event_without_its_closing_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed_line("data: x") is None
    event = decoder.close()
    assert event is not None and event.data == "x" and event.event == "message"


async def test_the_request_body_is_openai_shaped() -> None:
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append({"path": request.url.path, **json.loads(request.content)})
        return httpx.Response(
            200,
            content=sse(
                json.dumps({"choices": [{"delta": {"content": "ok"}, "finish_reason": "stop"}]}),
                "[DONE]",
            ),
            headers={"content-type": "text/event-stream"},
        )

    lm = scripted(handler, api_key="k", extra_body={"repetition_penalty": 1.1})
    with anyio.fail_after(TIMEOUT):
        assert await lm.complete(CHAT, temperature=0, stop="\n") == "ok"
    assert seen == [
        {
            "path": "/v1/chat/completions",
            "model": "m",
            "stream": True,
            "messages": CHAT,
            "max_tokens": 256,
            "temperature": 0,
            "stop": ["\n"],
            "repetition_penalty": 1.1,
        }
    ]


async def test_an_error_in_the_middle_of_the_stream_is_raised() -> None:
    body = sse(chunk("a"), json.dumps({"error": {"message": "CUDA out of memory", "code": 500}}))
    lm = scripted(event_stream(body))
    got: list[str] = []
    with (
        anyio.fail_after(TIMEOUT),
        pytest.raises(
            LMResponseError, match="reported an error during the generation: CUDA out of memory"
        ),
    ):
        async for delta in lm.stream("p"):
            got.append(delta)
    assert got == ["a"]


async def test_a_stream_cut_off_before_the_end_is_an_error() -> None:
    lm = scripted(event_stream(sse(chunk("a"), chunk("b"))))
    with (
        anyio.fail_after(TIMEOUT),
        pytest.raises(LMConnectionError, match="ended before the generation finished"),
    ):
        await lm.complete("p")


async def test_malformed_json_is_the_servers_fault() -> None:
    lm = scripted(event_stream(sse(chunk("a"), "{not json")))
    with (
        anyio.fail_after(TIMEOUT),
        pytest.raises(LMProtocolError, match="sent data that is not JSON: '\\{not json'"),
    ):
        await lm.complete("p")


async def test_a_chunk_without_text_is_the_servers_fault() -> None:
    lm = scripted(event_stream(sse(json.dumps({"choices": [{"index": 0}]}))))
    with (
        anyio.fail_after(TIMEOUT),
        pytest.raises(LMProtocolError, match="without the expected choices\\[0\\].text"),
    ):
        await lm.complete("p")


async def test_a_server_that_ignores_stream_true_still_works() -> None:
    body = json.dumps({"choices": [{"index": 0, "text": "whole\ntext", "finish_reason": "stop"}]})
    lm = scripted(
        lambda r: httpx.Response(200, content=body, headers={"content-type": "application/json"})
    )
    with anyio.fail_after(TIMEOUT):
        assert [line async for line in lm.stream_lines("p")] == ["whole", "text"]


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (401, "pass OpenAILM(..., api_key=...)"),
        (429, "overloaded or rate-limiting"),
        (503, "overloaded or rate-limiting"),
        (404, "Check the model name ('m')"),
    ],
)
async def test_status_errors_name_the_url_status_and_fix(status: int, hint: str) -> None:
    body = json.dumps({"error": {"message": "nope", "type": "x"}}).encode()
    lm = scripted(lambda r: httpx.Response(status, content=body))
    with anyio.fail_after(TIMEOUT), pytest.raises(LMResponseError) as info:
        await lm.complete("p")
    assert str(info.value).startswith(f"http://engine.test/v1/completions answered {status} ")
    assert ": nope." in str(info.value) and hint in str(info.value)
    assert info.value.detail == "nope"


async def test_a_read_timeout_says_which_timeout_and_how_to_raise_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    lm = scripted(handler)
    with (
        anyio.fail_after(TIMEOUT),
        pytest.raises(LMTimeoutError, match="waiting for the next bytes.*httpx.Timeout"),
    ):
        await lm.complete("p")


async def test_several_served_models_must_be_chosen_between() -> None:
    models = {"data": [{"id": "a"}, {"id": "b"}]}
    lm = OpenAILM(
        "http://engine.test/v1",
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json=models)),
    )
    with (
        anyio.fail_after(TIMEOUT),
        pytest.raises(
            LMResponseError,
            match="serves 2 models \\('a', 'b'\\); pass OpenAILM\\(..., model=NAME\\)",
        ),
    ):
        await lm.complete("p")


async def test_stream_json_list_on_malformed_server_output() -> None:
    lm = scripted(event_stream(sse(chunk('["a", '), chunk("b]", "stop"), "[DONE]")))
    with (
        anyio.fail_after(TIMEOUT),
        pytest.raises(JsonListError, match="element 1 is not valid JSON"),
    ):
        [e async for e in lm.stream_json_list("p")]


def test_base_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="base_url must be an http\\(s\\) URL"):
        OpenAILM("localhost:8000/v1")
