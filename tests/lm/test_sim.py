"""The simulated engine: its timing model on a virtual clock, its text, and its streams."""

from __future__ import annotations

import logging
import random
import statistics

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lmfakes import TIMEOUT

from altoflow.lm import CLAIMS, QUERIES, RESPONSE, JsonListParser, SimulatedLM, TimingModel
from altoflow.lm.sim import Finished, SimCore, TokenDue

T = TimingModel(
    ttft_s=1.0, prefill_s_per_token=0.1, time_per_token_s=0.5, batch_slowdown=0.1, max_batch=2
)


# -- the timing model, on a virtual clock ----------------------------------------------------


def test_a_request_alone_takes_ttft_plus_a_step_per_further_token() -> None:
    core = SimCore(T)
    core.submit(1, prompt=["a", "b"], n_out=3, now=10.0)
    # TTFT = 1.0 + 2 prompt tokens * 0.1; then one step of 0.5 s per token (batch of one).
    assert core.next_deadline() == pytest.approx(11.2)
    assert core.advance(11.19) == []
    out = core.advance(100.0)
    assert out == [
        TokenDue(1, 0, pytest.approx(11.2)),
        TokenDue(1, 1, pytest.approx(11.7)),
        TokenDue(1, 2, pytest.approx(12.2)),
        Finished(1, 3, pytest.approx(12.2)),
    ]
    assert core.next_deadline() is None
    assert T.duration_s(prompt_tokens=2, output_tokens=3) == pytest.approx(2.2)


def test_decode_steps_slow_down_as_the_batch_grows() -> None:
    core = SimCore(T)
    core.submit(1, prompt=[], n_out=3, now=0.0)
    core.submit(2, prompt=[], n_out=3, now=0.0)
    out = core.advance(100.0)
    # Both start decoding at 1.0; a step with two running takes 0.5 * (1 + 0.1) = 0.55.
    times = [(o.rid, o.index, round(o.at, 6)) for o in out if isinstance(o, TokenDue)]
    assert times == [(1, 0, 1.0), (2, 0, 1.0), (1, 1, 1.55), (2, 1, 1.55), (1, 2, 2.1), (2, 2, 2.1)]


def test_requests_beyond_max_batch_wait_for_a_free_slot() -> None:
    core = SimCore(T)
    for rid in (1, 2, 3):
        core.submit(rid, prompt=[], n_out=1, now=0.0)
    assert core.stats().running == 2
    assert core.stats().waiting == 1
    out = core.advance(100.0)
    finished = {o.rid: o.at for o in out if isinstance(o, Finished)}
    # 1 and 2 finish at their first token (1.0); 3 is admitted then and needs another TTFT.
    assert finished == {1: pytest.approx(1.0), 2: pytest.approx(1.0), 3: pytest.approx(2.0)}


def test_abort_frees_the_slot_and_stops_the_tokens() -> None:
    core = SimCore(T)
    core.submit(1, prompt=[], n_out=100, now=0.0)
    core.submit(2, prompt=[], n_out=100, now=0.0)
    core.submit(3, prompt=[], n_out=1, now=0.0)
    first = core.advance(1.6)
    assert [o.index for o in first if isinstance(o, TokenDue) and o.rid == 1] == [0, 1]
    assert core.abort(1, now=1.6)
    assert not core.abort(1, now=1.6)  # already gone
    out = core.advance(3.0)
    assert not any(o.rid == 1 for o in out)
    assert Finished(3, 1, pytest.approx(2.6)) in out  # admitted at the abort, TTFT 1.0 later
    stats = core.stats()
    assert (stats.submitted, stats.aborted, stats.finished, stats.running) == (3, 1, 1, 1)


def test_what_falls_due_before_a_submit_is_given_back_by_the_next_advance() -> None:
    core = SimCore(T)
    core.submit(1, prompt=[], n_out=1, now=0.0)
    core.submit(2, prompt=[], n_out=1, now=5.0)  # request 1 finished at 1.0, meanwhile
    assert core.advance(5.0) == [TokenDue(1, 0, 1.0), Finished(1, 1, 1.0)]


def test_a_prefix_cache_makes_a_repeated_prompt_prefix_free() -> None:
    timing = TimingModel(
        ttft_s=1.0, prefill_s_per_token=0.01, prefix_cache_blocks=8, block_tokens=4
    )
    core = SimCore(timing)
    prompt = [f"w{i}" for i in range(10)]  # two whole blocks and two tokens
    core.submit(1, prompt=prompt, n_out=1, now=0.0)
    assert core.next_deadline() == pytest.approx(1.10)
    core.advance(10.0)
    core.submit(2, prompt=prompt[:8] + ["other", "words", "here"], n_out=1, now=10.0)
    assert core.next_deadline() == pytest.approx(10.0 + 1.0 + 3 * 0.01)
    assert core.stats().prefix_cache_hit_tokens == 8
    no_cache = SimCore(TimingModel(ttft_s=1.0, prefill_s_per_token=0.01))
    no_cache.submit(1, prompt=prompt, n_out=1, now=0.0)
    no_cache.advance(10.0)
    no_cache.submit(2, prompt=prompt, n_out=1, now=10.0)
    assert no_cache.next_deadline() == pytest.approx(11.10)


def test_time_cannot_go_backwards() -> None:
    core = SimCore(T)
    core.advance(5.0)
    with pytest.raises(ValueError, match="time went backwards"):
        core.submit(1, prompt=[], n_out=1, now=4.0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 5), st.integers(0, 6), st.integers(0, 12), st.booleans(), st.floats(0, 5)
        ),
        max_size=8,
    ),
    st.integers(1, 3),
)
def test_every_request_gets_its_tokens_in_order_or_is_aborted(
    requests: list, max_batch: int
) -> None:
    """Random arrivals and aborts: tokens come in order, none after an abort, none lost."""
    core = SimCore(
        TimingModel(ttft_s=0.3, prefill_s_per_token=0.01, time_per_token_s=0.1, max_batch=max_batch)
    )
    events = []
    for rid, (at, n_prompt, n_out, abort, abort_after) in enumerate(requests):
        events.append((at, 0, rid, n_prompt, n_out))
        if abort:
            events.append((at + abort_after, 1, rid, 0, 0))
    tokens: dict[int, list[int]] = {}
    finished: set[int] = set()
    aborted: set[int] = set()
    last_time = 0.0
    for at, kind, rid, n_prompt, n_out in sorted(events):
        for o in core.advance(at):
            assert o.at >= last_time - 1e-9
            last_time = o.at
            if isinstance(o, TokenDue):
                assert o.rid not in aborted
                tokens.setdefault(o.rid, []).append(o.index)
            else:
                finished.add(o.rid)
        if kind == 0:
            core.submit(rid, prompt=["w"] * n_prompt, n_out=n_out, now=at)
        elif rid not in finished and core.abort(rid, now=at):
            aborted.add(rid)
    for o in core.advance(1e9):
        assert o.rid not in aborted
        if isinstance(o, TokenDue):
            tokens.setdefault(o.rid, []).append(o.index)
        else:
            finished.add(o.rid)
    for rid, (_, _, n_out, _, _) in enumerate(requests):
        got = tokens.get(rid, [])
        assert got == list(range(len(got)))
        if rid in aborted:
            assert rid not in finished
        else:
            assert rid in finished and len(got) == n_out
    assert core.stats().running == core.stats().waiting == 0


# -- calibration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "paper_seconds"),
    [(62.5, 1.3), (9.8, 0.4), (5.5, 0.33)],
    ids=["response", "claim", "query"],
)
def test_the_default_timing_matches_table_1_of_the_alto_paper(
    words: float, paper_seconds: float
) -> None:
    # A ~100-word prompt, alone on the engine; the paper's figures are given to ~2 digits.
    seconds = TimingModel().duration_s(prompt_tokens=100, output_tokens=words)
    assert seconds == pytest.approx(paper_seconds, rel=0.02)


@pytest.mark.parametrize(
    ("dist", "mean", "std"),
    [
        (RESPONSE.words, 62.5, 57.2),
        (CLAIMS.lines, 3.3, 1.8),
        (CLAIMS.words, 9.8, 3.5),
        (QUERIES.lines, 2.5, 1.3),
        (QUERIES.words, 5.5, 3.1),
    ],
)
def test_output_lengths_follow_the_papers_distributions(dist, mean: float, std: float) -> None:
    rng = random.Random(0)
    xs = [dist.sample(rng) for _ in range(20_000)]
    assert statistics.fmean(xs) == pytest.approx(mean, rel=0.05)
    assert statistics.pstdev(xs) == pytest.approx(std, rel=0.1)
    assert min(xs) >= 1


def test_scaled_runs_faster_by_the_factor() -> None:
    fast = TimingModel().scaled(0.01)
    assert fast.duration_s(100, 63) == pytest.approx(TimingModel().duration_s(100, 63) * 0.01)
    with pytest.raises(ValueError, match="time scale must be > 0"):
        TimingModel().scaled(0)


def test_a_bad_timing_model_is_refused() -> None:
    with pytest.raises(
        ValueError, match="TimingModel.time_per_token_s must be a finite number >= 0"
    ):
        TimingModel(time_per_token_s=-1)
    with pytest.raises(ValueError, match="TimingModel.max_batch must be an integer >= 1"):
        TimingModel(max_batch=0)


# -- the text --------------------------------------------------------------------------------

CLAIMS_PROMPT = "Extract the factual claims, one per line, from: The Thames flows through London."
QUERIES_PROMPT = "Write search queries, one per line, to verify: The Thames flows through London."


def test_plans_are_deterministic_given_seed_and_prompt() -> None:
    a, b = SimulatedLM(seed=3), SimulatedLM(seed=3)
    assert a.plan(CLAIMS_PROMPT) == b.plan(CLAIMS_PROMPT)
    assert a.plan(CLAIMS_PROMPT) != SimulatedLM(seed=4).plan(CLAIMS_PROMPT)
    assert a.plan(CLAIMS_PROMPT) != a.plan(CLAIMS_PROMPT, seed=1)


def test_claims_and_queries_prompts_get_lines_of_the_calibrated_shape() -> None:
    lm = SimulatedLM()
    claims = [lm.plan(f"{CLAIMS_PROMPT} ({i})") for i in range(400)]
    queries = [lm.plan(f"{QUERIES_PROMPT} ({i})") for i in range(400)]
    answers = [lm.plan(f"Who built Tower Bridge? ({i})") for i in range(400)]
    assert {p.shape for p in claims} == {"claims"}
    assert {p.shape for p in queries} == {"queries"}
    assert {p.shape for p in answers} == {"response"}
    n_claims = [len(p.text.split("\n")) for p in claims]
    words_per_claim = [len(line.split()) for p in claims for line in p.text.split("\n")]
    assert statistics.fmean(n_claims) == pytest.approx(3.3, rel=0.15)
    assert statistics.fmean(words_per_claim) == pytest.approx(9.8, rel=0.1)
    assert statistics.fmean(len(p.text.split("\n")) for p in queries) == pytest.approx(
        2.5, rel=0.15
    )
    assert all("\n" not in p.text for p in answers)
    assert statistics.fmean(len(p.tokens) for p in answers) == pytest.approx(62.5, rel=0.15)
    # One token per word: every token holds exactly one word.
    assert all(len(tok.split()) == 1 for p in claims[:20] for tok in p.tokens)


def test_queries_borrow_words_from_the_claim() -> None:
    lm = SimulatedLM()
    text = " ".join(lm.plan(f"{QUERIES_PROMPT} {i}").text for i in range(50)).lower()
    assert "thames" in text and "london" in text


def test_a_prompt_that_asks_for_json_gets_a_json_list() -> None:
    plan = SimulatedLM().plan("Extract the claims as a JSON list of strings: The Thames is long.")
    parser = JsonListParser()
    elements = [e for tok in plan.tokens for e in parser.feed(tok)]
    parser.close()
    assert plan.shape == "claims (json)"
    assert len(elements) >= 1 and all(isinstance(e, str) and e for e in elements)


def test_max_tokens_and_stop_cut_the_output() -> None:
    lm = SimulatedLM()
    full = lm.plan(CLAIMS_PROMPT, max_tokens=None)
    assert full.finish_reason == "stop"
    cut = lm.plan(CLAIMS_PROMPT, max_tokens=3)
    assert cut.tokens == full.tokens[:3] and cut.finish_reason == "length"
    first_line = full.text.split("\n")[0]
    stopped = lm.plan(CLAIMS_PROMPT, stop="\n", max_tokens=None)
    assert stopped.text == first_line and stopped.finish_reason == "stop"


# -- the in-process engine -------------------------------------------------------------------

FAST = TimingModel().scaled(0.01)


@pytest.mark.anyio
async def test_stream_lines_yields_the_planned_lines() -> None:
    lm = SimulatedLM(FAST, seed=5)
    with anyio.fail_after(TIMEOUT):
        lines = [line async for line in lm.stream_lines(CLAIMS_PROMPT)]
        assert lines == lm.plan(CLAIMS_PROMPT).text.split("\n")
        assert (
            await lm.complete(CLAIMS_PROMPT, max_tokens=4)
            == lm.plan(CLAIMS_PROMPT, max_tokens=4).text
        )
    assert lm.stats().finished == 2


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])  # trio: no loop futures
async def test_concurrent_streams_each_get_their_own_text() -> None:
    lm = SimulatedLM(FAST)
    prompts = [f"{QUERIES_PROMPT} {i}" for i in range(20)]
    results: dict[str, str] = {}

    async def one(p: str) -> None:
        results[p] = await lm.complete(p)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            for p in prompts:
                tg.start_soon(one, p)
    assert results == {p: lm.plan(p).text for p in prompts}
    assert lm.stats().running == 0


def test_one_engine_serves_event_loops_one_after_another() -> None:
    """``altoflow.run`` starts a loop per request: an engine made in one goes on in the next,
    also after a loop that ended with a stream left half-read."""
    import asyncio

    lm = SimulatedLM(FAST)
    prompts = [f"{QUERIES_PROMPT} {i}" for i in range(6)]

    async def some(ps: list[str], leave_one: bool) -> dict[str, str]:
        async def one(p: str) -> tuple[str, str]:
            return p, await lm.complete(p)

        if leave_one:  # a stream read once and never closed, as a crashed stage leaves it
            deltas = lm.stream(LONG_PROMPT, max_tokens=None)
            await deltas.__aenter__()
        return dict(await asyncio.wait_for(asyncio.gather(*(one(p) for p in ps)), TIMEOUT))

    first = asyncio.run(some(prompts[:3], leave_one=True))
    second = asyncio.run(some(prompts[3:], leave_one=False))
    assert {**first, **second} == {p: lm.plan(p).text for p in prompts}


# A prompt whose simulated answer is long (407 words at seed 0), so that an aborted generation is
# told apart from a finished one by a wide margin.
LONG_PROMPT = "Tell me the long history of the river Thames, part 125."


@pytest.mark.anyio
async def test_leaving_a_stream_early_aborts_it_in_the_engine() -> None:
    lm = SimulatedLM(TimingModel(ttft_s=0.001, prefill_s_per_token=0, time_per_token_s=0.05))
    with anyio.fail_after(TIMEOUT):
        async with lm.stream(LONG_PROMPT, max_tokens=None) as deltas:
            async for _ in deltas:
                break
    stats = lm.stats()
    assert (stats.aborted, stats.running, stats.tokens) == (1, 0, 1)


@pytest.mark.anyio
async def test_cancelling_the_task_aborts_the_generation_in_the_engine() -> None:
    lm = SimulatedLM(TimingModel(ttft_s=0.001, prefill_s_per_token=0, time_per_token_s=0.05))
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                async for _ in lm.stream_lines(LONG_PROMPT, max_tokens=None):
                    pass

            tg.start_soon(consume)
            while lm.stats().tokens < 2:
                await anyio.sleep(0.005)
            tg.cancel_scope.cancel()
    stats = lm.stats()
    assert stats.aborted == 1 and stats.running == 0
    planned = len(lm.plan(LONG_PROMPT, max_tokens=None).tokens)
    assert planned == 407 and stats.tokens < planned


def test_it_says_it_is_simulated(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="altoflow.lm.sim"):
        lm = SimulatedLM()
    assert "SIMULATED language model" in caplog.text
    assert lm.simulated and lm.name == "altoflow-simulated"
    assert "SIMULATED" in repr(lm)


def test_streams_on_several_threads_event_loops_each_get_their_own_text() -> None:
    """One engine shared by four threads' loops: a pump on one hands tokens to the others'
    streams through their loops' thread-safe wake-up, in order."""
    import asyncio
    import threading

    lm = SimulatedLM(FAST)
    prompts = {side: [f"{QUERIES_PROMPT} {side} {i}" for i in range(10)] for side in "abcd"}
    results: dict[str, str] = {}

    async def some(ps: list[str]) -> None:
        async def one(p: str) -> None:
            results[p] = await lm.complete(p)

        await asyncio.wait_for(asyncio.gather(*(one(p) for p in ps)), TIMEOUT)

    threads = [threading.Thread(target=asyncio.run, args=(some(ps),)) for ps in prompts.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    every = [p for ps in prompts.values() for p in ps]
    assert results == {p: lm.plan(p).text for p in every}
    assert lm.stats().running == 0


def test_a_stream_cancelled_while_it_waits_leaves_the_others_whole() -> None:
    import asyncio

    lm = SimulatedLM(FAST)
    prompts = [f"{QUERIES_PROMPT} {i}" for i in range(6)]
    errors: list[dict] = []

    async def main() -> dict[str, str]:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))

        async def reader() -> None:
            async with lm.stream(LONG_PROMPT, max_tokens=None) as deltas:
                async for _ in deltas:
                    pass

        async def one(p: str) -> tuple[str, str]:
            return p, await lm.complete(p)

        doomed = asyncio.ensure_future(reader())
        others = asyncio.gather(*(one(p) for p in prompts))
        await asyncio.sleep(FAST.ttft_s * 2)  # the reader has its first tokens and waits
        doomed.cancel()
        done = dict(await asyncio.wait_for(others, TIMEOUT))
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return done

    assert asyncio.run(main()) == {p: lm.plan(p).text for p in prompts}
    assert errors == []
    assert lm.stats().running == 0 and lm.stats().aborted == 1


def test_a_stream_goes_on_while_another_threads_loop_sharing_its_engine_is_blocked() -> None:
    """Each loop has its own timer for the pool: a stream whose tokens fall due is woken by its
    own loop, even when the last loop to wait on the pool is blocked and fires nothing."""
    import asyncio
    import threading

    lm = SimulatedLM(FAST)
    waiting, release = threading.Event(), threading.Event()

    async def blocked() -> None:
        waiting.wait(TIMEOUT)  # the other loop's stream has started and waits for its tokens
        loop = asyncio.get_running_loop()
        async with lm.stream(LONG_PROMPT, max_tokens=None) as deltas:
            # This stream waits on the pool last; then its loop blocks until released.
            loop.call_soon(release.wait, TIMEOUT)
            async for _ in deltas:
                pass

    async def goes_on() -> str:
        task = asyncio.ensure_future(lm.complete(QUERIES_PROMPT))
        await asyncio.sleep(0)  # its stream has submitted and waits
        waiting.set()
        try:
            return await asyncio.wait_for(task, TIMEOUT / 2)
        finally:
            release.set()

    other = threading.Thread(target=asyncio.run, args=(blocked(),))
    other.start()
    try:
        assert asyncio.run(goes_on()) == lm.plan(QUERIES_PROMPT).text
    finally:
        release.set()
        other.join(TIMEOUT)
