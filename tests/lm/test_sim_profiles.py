"""Deployment profiles of the simulated engine: pools of engines per LM stage, on a virtual clock,
in process, and behind ``altoflow sim-lm --profile``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lmfakes import TIMEOUT, start_server

from altoflow.lm import OpenAILM, SimulatedLM, TimingModel
from altoflow.lm.sim import (
    DEFAULT_POOL,
    PAPER,
    PROFILES,
    UNBOUNDED,
    Finished,
    Pool,
    Profile,
    SimCore,
    SimPool,
    TokenDue,
    UnknownPoolError,
    get_profile,
)

T = TimingModel(ttft_s=1.0, prefill_s_per_token=0.0, time_per_token_s=0.5, batch_slowdown=0.1)


# -- a pool on a virtual clock ---------------------------------------------------------------


def test_two_engines_of_batch_one_run_two_requests_and_queue_the_third() -> None:
    pool = SimPool(Pool(engines=2, max_batch=1).timing_of(T), engines=2)
    assert [pool.submit(rid, prompt=[], n_out=2, now=0.0) for rid in (1, 2, 3)] == [0, 1, 0]
    stats = pool.stats()
    assert (stats.engines, stats.max_batch, stats.busy_engines) == (2, 1, 2)
    assert (stats.running, stats.waiting, stats.queued) == (2, 1, 1)
    out = pool.advance(100.0)
    finished = {o.rid: o.at for o in out if isinstance(o, Finished)}
    # Alone on its engine each takes TTFT + one step (1.5 s); 3 joins engine 0 when 1 ends.
    assert finished == {1: pytest.approx(1.5), 2: pytest.approx(1.5), 3: pytest.approx(3.0)}
    assert [round(o.at, 6) for o in out] == sorted(round(o.at, 6) for o in out)
    stats = pool.stats()
    assert (stats.running, stats.waiting, stats.busy_engines, stats.finished) == (0, 0, 0, 3)
    assert stats.queued == 1


def test_a_request_goes_to_the_least_loaded_engine() -> None:
    pool = SimPool(T, engines=3)
    assert pool.submit(1, prompt=[], n_out=10, now=0.0) == 0
    assert pool.submit(2, prompt=[], n_out=1, now=0.0) == 1
    assert pool.submit(3, prompt=[], n_out=10, now=0.0) == 2
    # Request 2 finished at 1.0, so engine 1 is the idle one at 2.0.
    assert pool.submit(4, prompt=[], n_out=1, now=2.0) == 1
    assert pool.submit(5, prompt=[], n_out=1, now=2.0) == 0


def test_an_abort_in_a_pool_frees_its_engine_and_its_queue() -> None:
    pool = SimPool(Pool(max_batch=1).timing_of(T), engines=1)
    pool.submit(1, prompt=[], n_out=100, now=0.0)
    pool.submit(2, prompt=[], n_out=1, now=0.0)
    assert pool.stats().waiting == 1
    assert pool.abort(1, now=0.5)
    assert not pool.abort(1, now=0.5)
    assert (pool.stats().running, pool.stats().waiting) == (1, 0)
    assert pool.advance(10.0) == [TokenDue(2, 0, pytest.approx(1.5)), Finished(2, 1, 1.5)]
    pool.submit(3, prompt=[], n_out=9, now=10.0)
    with pytest.raises(ValueError, match="request 3 was already submitted"):
        pool.submit(3, prompt=[], n_out=1, now=10.0)


def test_a_finished_request_id_can_be_used_again() -> None:
    pool = SimPool(T, engines=2)
    pool.submit(1, prompt=[], n_out=1, now=0.0)
    pool.advance(5.0)
    pool.submit(1, prompt=[], n_out=1, now=5.0)
    assert pool.stats().submitted == 2


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 5), st.integers(0, 6), st.integers(0, 12), st.booleans()),
        max_size=10,
    ),
    st.integers(1, 3),
)
def test_the_unbounded_profile_is_todays_single_engine(requests: list, max_batch: int) -> None:
    """One pool of one engine gives exactly what one SimCore gives, aborts included."""
    timing = TimingModel(
        ttft_s=0.3, prefill_s_per_token=0.01, time_per_token_s=0.1, max_batch=max_batch
    )
    core = SimCore(timing)
    pool = SimPool(UNBOUNDED.pool(DEFAULT_POOL).timing_of(timing), UNBOUNDED.default.engines)
    events = sorted(
        [(at, 0, rid, n_prompt, n_out) for rid, (at, n_prompt, n_out, _) in enumerate(requests)]
        + [(at + 0.4, 1, rid, 0, 0) for rid, (at, _, _, abort) in enumerate(requests) if abort]
    )
    for at, kind, rid, n_prompt, n_out in events:
        assert pool.advance(at) == core.advance(at)
        if kind == 0:
            core.submit(rid, prompt=["w"] * n_prompt, n_out=n_out, now=at)
            pool.submit(rid, prompt=["w"] * n_prompt, n_out=n_out, now=at)
        else:
            assert pool.abort(rid, at) == core.abort(rid, at)
    assert pool.advance(1e9) == core.advance(1e9)
    stats = pool.stats()
    assert tuple(core.stats()) == (
        stats.submitted, stats.finished, stats.aborted, stats.running, stats.waiting,
        stats.tokens, stats.prefix_cache_hit_tokens, stats.queued,
    )


# -- profiles --------------------------------------------------------------------------------


def test_the_paper_profile_is_the_papers_deployment() -> None:
    assert get_profile("paper") is PAPER and set(PROFILES) == {"paper", "unbounded"}
    assert {name: pool.engines for name, pool in PAPER.pools.items()} == {
        "answer": 2, "claims": 2, "queries": 3,  # the paper's
        # ours, for the other LM stages of the example applications: eight engines an app
        "verdict": 1, "summary": 6, "synthesis": 2, "reasoning": 8, "generate": 2, "judge": 6,
    }
    assert dict(PAPER.replicas) == {"bm25": 4, "colbert": 1, "rerank": 4}
    assert PAPER.default is None
    assert (UNBOUNDED.pools, UNBOUNDED.default) == ({}, Pool(engines=1, max_batch=None))


def test_a_request_picks_its_pool_by_model_name() -> None:
    assert PAPER.pool_for("sim/claims") == "claims"
    assert PAPER.models()[:4] == ["sim/answer", "sim/claims", "sim/queries", "sim/verdict"]
    with pytest.raises(UnknownPoolError, match=r"no pool 'claim' \(model 'sim/claim'\); its "
                                               r"models are 'sim/answer', 'sim/claims'"):
        PAPER.pool_for("sim/claim")
    with pytest.raises(UnknownPoolError, match="has no default pool, so a request must name its "
                                               "pool as the model, one of 'sim/answer'"):
        PAPER.pool_for("altoflow-simulated")
    # Without pools, every request runs on the default, whatever it names.
    assert {UNBOUNDED.pool_for(m) for m in (None, "gpt-4o", "sim/answer")} == {DEFAULT_POOL}
    assert UNBOUNDED.models() == ["altoflow-simulated"]
    mixed = Profile("mixed", pools={"answer": Pool(2)})
    assert (mixed.pool_for("sim/answer"), mixed.pool_for("anything")) == ("answer", DEFAULT_POOL)
    assert mixed.models() == ["altoflow-simulated", "sim/answer"]


def test_bad_profiles_are_refused() -> None:
    with pytest.raises(ValueError, match="Pool.engines must be an integer >= 1, got 0"):
        Pool(engines=0)
    with pytest.raises(ValueError, match="Pool.max_batch must be an integer >= 1 or None"):
        Pool(max_batch=0)
    with pytest.raises(ValueError, match="a pool is named by a non-empty word without '/'"):
        Profile("p", pools={"sim/answer": Pool()})
    with pytest.raises(ValueError, match="has neither pools nor a default pool"):
        Profile("p", default=None)
    with pytest.raises(ValueError, match=r"replicas\['bm25'\] must be an integer >= 1"):
        Profile("p", replicas={"bm25": 0})
    with pytest.raises(ValueError, match="unknown simulated profile 'papr'; the profiles are"):
        get_profile("papr")


def test_a_pools_own_max_batch_overrides_the_timing_models() -> None:
    assert Pool(max_batch=4).timing_of(T).max_batch == 4
    assert Pool().timing_of(T) is T


# -- in process ------------------------------------------------------------------------------

FAST = TimingModel().scaled(0.01)
CLAIMS_PROMPT = "Extract the factual claims, one per line, from: The Thames flows through London."


@pytest.mark.anyio
async def test_stages_share_the_deployment_through_for_pool() -> None:
    answer = SimulatedLM(FAST, seed=2, profile="paper", pool="answer")
    claims = answer.for_pool("claims")
    with anyio.fail_after(TIMEOUT):
        text = await answer.complete("Where does the Thames flow?")
        lines = [line async for line in claims.stream_lines(CLAIMS_PROMPT)]
    assert text == answer.plan("Where does the Thames flow?").text
    assert lines == claims.plan(CLAIMS_PROMPT).text.split("\n")
    per_pool = {name: s.finished for name, s in answer.pool_stats().items()}
    assert per_pool == {name: 0 for name in PAPER.pools} | {"answer": 1, "claims": 1}
    assert answer.stats().finished == 2 and claims.pool_stats() == answer.pool_stats()
    assert "profile='paper', pool='claims'" in repr(claims)


@pytest.mark.anyio
async def test_a_call_with_no_pool_on_a_profile_without_a_default_says_how_to_pick_one() -> None:
    lm = SimulatedLM(FAST, profile=PAPER)
    with pytest.raises(UnknownPoolError, match=r"SimulatedLM\(\.\.\., pool='answer'\) or "
                                               r"lm.for_pool\(NAME\)"):
        await lm.complete("Where does the Thames flow?")
    with pytest.raises(UnknownPoolError, match="has no pool 'answers'; its pools are 'answer'"):
        lm.for_pool("answers")


@pytest.mark.anyio
async def test_the_default_lm_is_one_engine_as_before() -> None:
    lm = SimulatedLM(FAST)
    assert lm.profile is UNBOUNDED and lm.pool is None
    (name, stats), = lm.pool_stats().items()
    assert (name, stats.engines, stats.max_batch) == (DEFAULT_POOL, 1, 256)


# -- the server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paper_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``altoflow sim-lm --profile paper`` 50 times faster, each engine batching one request."""
    yield from start_server(
        ["-m", "altoflow.lm.sim_server", "--profile", "paper", "--time-scale", "0.02",
         "--max-batch", "1", "--seed", "7"],
        "/v1/models",
        tmp_path_factory.mktemp("sim"),
        "sim-paper",
    )


@pytest.mark.anyio
async def test_the_server_routes_by_model_and_reports_every_pool(
    paper_server: tuple[str, Path],
) -> None:
    base, log = paper_server
    root = base.removesuffix("/v1")
    lm = OpenAILM(base, model="sim/claims")
    with anyio.fail_after(TIMEOUT):
        async with httpx.AsyncClient() as http:
            models = (await http.get(f"{base}/models")).json()
            assert [m["id"] for m in models["data"]] == PAPER.models()
            assert {m["profile"] for m in models["data"]} == {"paper"}
            before = (await http.get(f"{root}/altoflow/stats")).json()
            # Three at once on the two claims engines of batch one.
            prompts = [f"{CLAIMS_PROMPT} ({i})" for i in range(3)]
            got = {}

            async def one(p: str) -> None:
                got[p] = await lm.complete(p)

            async with anyio.create_task_group() as tg:
                for p in prompts:
                    tg.start_soon(one, p)
            after = (await http.get(f"{root}/altoflow/stats")).json()
            refused = await http.post(
                f"{base}/completions", json={"model": "sim/claim", "prompt": "x"}
            )
            unnamed = await http.post(f"{base}/completions", json={"prompt": "x"})
    oracle = SimulatedLM(seed=7)
    assert got == {p: oracle.plan(p).text for p in prompts}
    assert after["profile"] == "paper" and after["replicas"] == dict(PAPER.replicas)
    claims = after["pools"]["claims"]
    assert claims["finished"] - before["pools"]["claims"]["finished"] == 3
    assert (claims["engines"], claims["max_batch"], claims["running"]) == (2, 1, 0)
    assert after["pools"]["answer"]["submitted"] == before["pools"]["answer"]["submitted"]
    assert after["finished"] == sum(p["finished"] for p in after["pools"].values())
    assert refused.status_code == 404
    assert "has no pool 'claim'" in refused.json()["error"]["message"]
    assert refused.json()["error"]["code"] == "model_not_found"
    assert unnamed.status_code == 404 and "has no default pool" in unnamed.text
    assert "profile 'paper'" in log.read_text()


def test_sim_lm_refuses_an_unknown_profile() -> None:
    from typer.testing import CliRunner

    from altoflow.cli import app

    refused = CliRunner().invoke(app, ["sim-lm", "--profile", "papr"])
    assert refused.exit_code != 0
    assert "unknown simulated profile 'papr'" in refused.output


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["submit", "abort", "advance", "deadline"]),
                  st.floats(0, 3), st.integers(0, 5), st.integers(0, 6)),
        max_size=30,
    ),
    st.integers(1, 3),
    st.integers(1, 3),
)
def test_a_pool_s_deadline_is_its_engines_earliest_after_any_events(ops, engines, max_batch):
    # The pool keeps its deadline between events and skips advances that have nothing due:
    # it must always say what its engines say, and every request must still get its tokens.
    pool = SimPool(Pool(max_batch=max_batch).timing_of(T), engines=engines)
    now, wants, got, ended, aborted = 0.0, {}, {}, set(), set()

    def record(out):
        for o in out:
            if isinstance(o, TokenDue):
                got.setdefault(o.rid, []).append(o.index)
            else:
                ended.add(o.rid)

    for op, gap, rid, n_out in ops:
        now += gap
        if op == "submit" and rid not in wants:
            wants[rid] = n_out
            pool.submit(rid, prompt=["w"] * n_out, n_out=n_out, now=now)
        elif op == "abort" and rid in wants and pool.abort(rid, now):
            aborted.add(rid)
        elif op == "advance":
            record(pool.advance(now))
        deadlines = [d for d in (e.next_deadline() for e in pool.engines) if d is not None]
        assert pool.next_deadline() == (min(deadlines) if deadlines else None)
    while (deadline := pool.next_deadline()) is not None:
        now = max(now, deadline)
        record(pool.advance(now))
    record(pool.advance(now))  # what a last submit or abort's catch-up found due
    assert pool.advance(now) == []
    for rid, n_out in wants.items():
        if rid not in aborted:
            assert rid in ended and got.get(rid, []) == list(range(n_out)), rid
    with pytest.raises(ValueError, match="time went backwards"):
        pool.advance(now - 1.0)
