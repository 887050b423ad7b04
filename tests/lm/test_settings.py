"""The ALTOFLOW_LM* convention that every example application uses to pick its engine."""

from __future__ import annotations

import pytest

from altoflow.lm import LMSettings, LMSettingsError, OpenAILM, SimulatedLM, TimingModel, lm_from_env


def test_default_is_the_simulated_engine() -> None:
    lm = lm_from_env({})
    assert isinstance(lm, SimulatedLM)
    assert lm.simulated and lm.seed == 0


def test_sim_seed_and_speed() -> None:
    lm = lm_from_env({"ALTOFLOW_LM": "sim", "ALTOFLOW_LM_SEED": "7", "ALTOFLOW_LM_SPEED": "100"})
    assert isinstance(lm, SimulatedLM) and lm.seed == 7
    slow = lm_from_env({})
    assert isinstance(slow, SimulatedLM)
    assert lm.timing == slow.timing.scaled(0.01)


@pytest.mark.anyio
async def test_openai_backend_takes_url_model_and_key() -> None:
    lm = lm_from_env({"ALTOFLOW_LM": "OpenAI", "ALTOFLOW_LM_URL": "http://127.0.0.1:9/v1",
                      "ALTOFLOW_LM_MODEL": "m", "ALTOFLOW_LM_API_KEY": "k"})
    assert isinstance(lm, OpenAILM)
    assert (lm.base_url, lm.model) == ("http://127.0.0.1:9/v1", "m")
    await lm.aclose()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"ALTOFLOW_LM": "gpt"}, "ALTOFLOW_LM: Input should be 'sim', 'openai'"),
        ({"ALTOFLOW_LM": "openai"}, "ALTOFLOW_LM=openai needs ALTOFLOW_LM_URL"),
        ({"ALTOFLOW_LM": "vllm"}, "ALTOFLOW_LM=vllm needs ALTOFLOW_LM_MODEL"),
        ({"ALTOFLOW_LM_SPEED": "0"}, "ALTOFLOW_LM_SPEED: Input should be greater than 0"),
        ({"ALTOFLOW_LM_SEED": "x"}, "ALTOFLOW_LM_SEED: Input should be a valid integer"),
    ],
)
def test_bad_settings_name_the_variable_and_the_fix(env: dict[str, str], says: str) -> None:
    with pytest.raises(LMSettingsError, match="^" + says.replace("(", r"\(")) as info:
        LMSettings.from_env(env)
    assert "ALTOFLOW_LM" in str(info.value)


def test_a_pool_picks_the_simulated_profiles_pool() -> None:
    lm = lm_from_env({"ALTOFLOW_LM_PROFILE": "paper"}, pool="claims")
    assert isinstance(lm, SimulatedLM)
    assert (lm.profile.name, lm.pool) == ("paper", "claims")
    # Without pools (the default profile) the name is invisible: every pool is the one engine.
    plain = lm_from_env({}, pool="claims")
    assert isinstance(plain, SimulatedLM)
    assert (plain.profile.name, plain.pool) == ("unbounded", None)


def test_a_pool_the_profile_lacks_is_refused_by_name() -> None:
    from altoflow.lm.sim import UnknownPoolError

    with pytest.raises(UnknownPoolError, match="no pool 'claim'"):
        lm_from_env({"ALTOFLOW_LM_PROFILE": "paper"}, pool="claim")


def test_an_unknown_profile_names_the_variable_and_the_profiles() -> None:
    with pytest.raises(LMSettingsError, match="^ALTOFLOW_LM_PROFILE='papr' names no simulated "
                                              "deployment; set it to one of unbounded, paper"):
        LMSettings.from_env({"ALTOFLOW_LM_PROFILE": "papr"})


@pytest.mark.anyio
async def test_openai_model_name_takes_the_pool() -> None:
    env = {"ALTOFLOW_LM": "openai", "ALTOFLOW_LM_URL": "http://127.0.0.1:9/v1",
           "ALTOFLOW_LM_MODEL": "sim/{pool}"}
    lm = lm_from_env(env, pool="verdict")
    assert isinstance(lm, OpenAILM) and lm.model == "sim/verdict"
    await lm.aclose()
    fixed = lm_from_env({**env, "ALTOFLOW_LM_MODEL": "m"}, pool="verdict")
    assert isinstance(fixed, OpenAILM) and fixed.model == "m"
    await fixed.aclose()
    with pytest.raises(LMSettingsError, match="names a model per pool, but this LM call names no pool"):
        lm_from_env(env)


@pytest.mark.anyio
async def test_loop_lm_shares_one_simulated_deployment_between_pools(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from altoflow.lm import loop_lm, use_loop_lm

    monkeypatch.setenv("ALTOFLOW_LM_PROFILE", "paper")
    answer, claims = loop_lm("answer"), loop_lm("claims")
    assert isinstance(answer, SimulatedLM) and isinstance(claims, SimulatedLM)
    assert (answer.pool, claims.pool) == ("answer", "claims")
    assert loop_lm("answer") is answer
    await answer.complete("a question")
    assert answer.pool_stats()["answer"].finished == 1  # one deployment: claims sees it too
    assert claims.pool_stats()["answer"].finished == 1
    mine = SimulatedLM(TimingModel().scaled(0.01), seed=3)
    use_loop_lm(mine)
    assert loop_lm("claims") is mine and loop_lm() is mine  # no pools: one engine
