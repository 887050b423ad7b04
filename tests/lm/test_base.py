"""The LM interface, driven by a scripted engine: helpers, chunkings, aborts, arguments."""

from __future__ import annotations

import gc
import json
from itertools import pairwise

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lmfakes import TIMEOUT, ScriptedLM

import altoflow.lm as lm_pkg
from altoflow.lm import ChatMessage, EngineNotInstalledError, JsonListError, Sampling
from altoflow.lm._base import normalize_prompt, require

pytestmark = pytest.mark.anyio

CLAIMS_TEXT = "The Thames is 346 km long.\nIt flows through London.\n\nIt rises in Gloucestershire."
CLAIMS = ["The Thames is 346 km long.", "It flows through London.", "It rises in Gloucestershire."]


async def collect(stream) -> list:
    with anyio.fail_after(TIMEOUT):
        return [item async for item in stream]


# -- the helpers built on stream -----------------------------------------------------------


async def test_complete_joins_the_deltas() -> None:
    lm = ScriptedLM(["Hel", "", "lo", " world"])
    with anyio.fail_after(TIMEOUT):
        assert await lm.complete("hi") == "Hello world"
    assert lm.finished


async def test_stream_drops_empty_deltas() -> None:
    assert await collect(ScriptedLM(["a", "", "b"]).stream("p")) == ["a", "b"]


@pytest.mark.parametrize("cut", range(len(CLAIMS_TEXT) + 1))
async def test_stream_lines_on_every_pair_of_chunks(cut: int) -> None:
    lm = ScriptedLM([CLAIMS_TEXT[:cut], CLAIMS_TEXT[cut:]])
    assert await collect(lm.stream_lines("p")) == CLAIMS


@pytest.mark.parametrize("cut", range(len(CLAIMS_TEXT) + 1))
async def test_stream_json_list_on_every_pair_of_chunks(cut: int) -> None:
    text = json.dumps(CLAIMS, indent=1)
    lm = ScriptedLM([text[:cut], text[cut:]])
    assert await collect(lm.stream_json_list("p")) == CLAIMS


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cuts=st.lists(st.integers(0, len(CLAIMS_TEXT)), max_size=10))
def test_stream_lines_on_any_chunking(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(CLAIMS_TEXT)]
    lm = ScriptedLM([CLAIMS_TEXT[a:b] for a, b in pairwise(bounds)])
    assert anyio.run(collect, lm.stream_lines("p")) == CLAIMS


async def test_each_line_is_yielded_before_the_next_chunk_is_generated() -> None:
    # A fan-out stage gets a claim while the LM is still writing the next one.
    lm = ScriptedLM(["first cl", "aim\nsecond", " claim\n", "third"])
    seen = []
    with anyio.fail_after(TIMEOUT):
        async for line in lm.stream_lines("p"):
            seen.append((line, lm.pulled))
    assert seen == [("first claim", 2), ("second claim", 3), ("third", 4)]


async def test_each_json_element_is_yielded_before_the_next_chunk_is_generated() -> None:
    lm = ScriptedLM(['["a"', ', "b', '", 3', "]"])
    seen = []
    with anyio.fail_after(TIMEOUT):
        async for element in lm.stream_json_list("p"):
            seen.append((element, lm.pulled))
    assert seen == [("a", 1), ("b", 3), (3, 4)]


async def test_stream_json_list_stops_the_generation_once_the_list_closes() -> None:
    lm = ScriptedLM(['["a", "b"]', "\n```\nI hope this helps", " and more", " and more"])
    assert await collect(lm.stream_json_list("p")) == ["a", "b"]
    assert lm.closed_after == 1  # nothing after the list was generated


async def test_stream_json_list_fails_on_output_that_stops_inside_the_list() -> None:
    lm = ScriptedLM(['["a", "b'])
    with pytest.raises(JsonListError, match="never closed"):
        await collect(lm.stream_json_list("p"))


async def test_stream_json_list_lenient_skips_a_preamble() -> None:
    lm = ScriptedLM(["Here you go:\n", '```json\n["x"]', "\n```"])
    assert await collect(lm.stream_json_list("p", lenient=True)) == ["x"]


# -- aborting --------------------------------------------------------------------------------


async def test_leaving_async_with_aborts_the_generation_at_once() -> None:
    lm = ScriptedLM(["a\n", "b\n", "c\n", "d\n"])
    with anyio.fail_after(TIMEOUT):
        async with lm.stream_lines("p") as lines:
            async for line in lines:
                if line == "b":
                    break
        assert lm.closed_after == 2


async def test_aclose_aborts_the_generation() -> None:
    lm = ScriptedLM(["a", "b", "c"])
    stream = lm.stream("p")
    with anyio.fail_after(TIMEOUT):
        assert await stream.__anext__() == "a"
        await stream.aclose()
    assert lm.closed_after == 1
    assert not lm.finished


async def test_a_plain_break_aborts_the_generation_once_the_stream_is_dropped() -> None:
    lm = ScriptedLM(["a\n", "b\n", "c\n", "d\n"])
    with anyio.fail_after(TIMEOUT):
        async for line in lm.stream_lines("p"):
            if line == "a":
                break
        gc.collect()
        # The event loop closes the abandoned generators on its next turns.
        while lm.closed_after is None:
            await anyio.sleep(0.001)
    assert lm.closed_after == 1


class SlowLM(ScriptedLM):
    """Waits for ``release`` before every chunk after the first."""

    def __init__(self, chunks: list[str]) -> None:
        super().__init__(chunks)
        self.release = anyio.Event()

    async def _generate(self, prompt, sampling):
        try:
            for i, chunk in enumerate(self.chunks):
                if i:
                    await self.release.wait()
                self.pulled += 1
                yield chunk
            self.finished = True
        finally:
            if not self.finished:
                self.closed_after = self.pulled


async def test_cancelling_the_task_aborts_the_generation() -> None:
    lm = SlowLM(["a\n", "b\n"])
    got = []

    async def consume() -> None:
        async for line in lm.stream_lines("p"):
            got.append(line)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            while not got:
                await anyio.sleep(0.001)
            tg.cancel_scope.cancel()
    assert got == ["a"]
    assert lm.closed_after == 1


# -- arguments -------------------------------------------------------------------------------


async def test_per_call_sampling_overrides_the_engine_defaults() -> None:
    lm = ScriptedLM(["x"])
    lm.sampling = Sampling(max_tokens=10, temperature=0.5)
    with anyio.fail_after(TIMEOUT):
        await lm.complete("p", temperature=0.0, stop=["\n\n"])
    _, sampling = lm.calls[0]
    assert sampling == Sampling(max_tokens=10, temperature=0.0, stop=("\n\n",))


def test_an_unknown_sampling_parameter_names_the_right_one() -> None:
    lm = ScriptedLM([])
    with pytest.raises(
        TypeError,
        match="unknown sampling parameter 'max_new_tokens' \\(did you mean 'max_tokens'\\?\\)",
    ):
        lm.stream("p", max_new_tokens=5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": -1}, "max_tokens must be at least 0, got -1"),
        ({"temperature": 3}, "temperature must be in \\[0.0, 2.0\\], got 3"),
        ({"top_p": 0}, "top_p must be in \\(0.0, 1.0\\], got 0"),
        ({"top_k": 0}, "top_k must be at least 1, got 0"),
        ({"stop": ["", "x"]}, "stop must be a string or a list of non-empty strings"),
        ({"seed": 1.5}, "seed must be an integer or None, got 1.5"),
    ],
)
def test_bad_sampling_values_are_refused_with_the_rule(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Sampling(**kwargs)


def test_sampling_as_openai_sends_only_what_is_set() -> None:
    assert Sampling().as_openai() == {"max_tokens": 256}
    assert Sampling(max_tokens=None, stop="\n", seed=3).as_openai() == {"stop": ["\n"], "seed": 3}


def test_prompts_are_completion_strings_or_chat_messages() -> None:
    assert normalize_prompt("hi") == "hi"
    assert normalize_prompt(
        [{"role": "user", "content": "hi"}, ChatMessage("assistant", "yo")]
    ) == (
        ChatMessage("user", "hi"),
        ChatMessage("assistant", "yo"),
    )


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (b"hi", "the prompt is bytes; decode it first"),
        (42, "the prompt is a int; pass a string for a completion prompt"),
        ([], "the chat prompt has no messages"),
        (["hi"], "message 0 of the chat prompt is a str, not a mapping"),
        ([{"role": "user"}], "message 0 of the chat prompt needs string 'role' and 'content'"),
    ],
)
def test_a_wrong_prompt_shows_the_right_shape(prompt: object, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message) as info:
        ScriptedLM([]).stream(prompt)  # type: ignore[arg-type]
    assert "[{'role': 'system', 'content': '...'}" in str(info.value)


def test_a_missing_engine_library_names_the_extra() -> None:
    with pytest.raises(EngineNotInstalledError, match=r"pip install 'altoflow\[vllm\]'") as info:
        require("altoflow_no_such_module", engine="VllmLM", extra="vllm")
    assert isinstance(info.value, ImportError)
    assert "VllmLM needs the 'altoflow_no_such_module' package" in str(info.value)


# -- the public surface ----------------------------------------------------------------------


def test_every_public_name_resolves() -> None:
    for name in lm_pkg.__all__:
        assert getattr(lm_pkg, name) is not None, name


def test_public_names_match_the_module() -> None:
    public = {
        name
        for name, value in vars(lm_pkg).items()
        if not name.startswith("_")
        and not isinstance(value, type(lm_pkg))
        and name != "annotations"
    }
    assert public == set(lm_pkg.__all__)
