"""The ALTOFLOW_LM* convention that every example application uses to pick its engine."""

from __future__ import annotations

import pytest

from altoflow.lm import LMSettings, LMSettingsError, OpenAILM, SimulatedLM, lm_from_env


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
