"""Language model engines behind one interface.

Every engine is an :class:`LM`: ``complete(prompt, **sampling) -> str``, ``stream(prompt)``
(text deltas), ``stream_lines(prompt)`` (each line as soon as its newline is generated) and
``stream_json_list(prompt)`` (each element of a JSON list as soon as it closes). Leaving a stream
early or cancelling the task aborts the generation in the engine.

Engines:

- :class:`SimulatedLM`: simulated timing and text, for benchmarks and offline demos; also served
  over an OpenAI-compatible HTTP API by ``altoflow sim-lm``.
- :class:`OpenAILM`: any OpenAI-compatible HTTP server (on httpx, a core dependency).
- :class:`LlamaCppLM`: llama.cpp in-process (``altoflow[llamacpp]``).
- :class:`VllmLM`: vLLM in-process (``altoflow[vllm]``).
- :class:`SGLangLM`: SGLang in-process (``altoflow[sglang]``).

:func:`lm_from_env` picks one of them from ``ALTOFLOW_LM*`` environment variables
(:mod:`altoflow.lm.settings`), the one convention every example application follows;
:func:`loop_lm` keeps one per event loop and LM stage (pool).

The in-process engines' libraries (the extras) are imported when an engine is created, never
when this package is imported.
"""

from __future__ import annotations

from ._base import (
    LM,
    ChatMessage,
    EngineNotInstalledError,
    LMConnectionError,
    LMError,
    LMProtocolError,
    LMResponseError,
    LMStream,
    LMTimeoutError,
    Prompt,
    Sampling,
)
from ._text import JsonListError, JsonListParser, LineSplitter
from .llamacpp import LlamaCppLM
from .openai import OpenAILM
from .settings import LMSettings, LMSettingsError, lm_from_env, loop_lm, use_loop_lm
from .sglang import SGLangLM
from .sim import (
    CLAIMS,
    QUERIES,
    RESPONSE,
    SIMULATED_MODEL_NAME,
    LengthDist,
    OutputShape,
    ShapeRule,
    SimPlan,
    SimulatedLM,
    TimingModel,
)
from .vllm import VllmLM

__all__ = [
    "CLAIMS",
    "LM",
    "QUERIES",
    "RESPONSE",
    "SIMULATED_MODEL_NAME",
    "ChatMessage",
    "EngineNotInstalledError",
    "JsonListError",
    "JsonListParser",
    "LMConnectionError",
    "LMError",
    "LMProtocolError",
    "LMResponseError",
    "LMSettings",
    "LMSettingsError",
    "LMStream",
    "LMTimeoutError",
    "LengthDist",
    "LineSplitter",
    "LlamaCppLM",
    "OpenAILM",
    "OutputShape",
    "Prompt",
    "SGLangLM",
    "Sampling",
    "ShapeRule",
    "SimPlan",
    "SimulatedLM",
    "TimingModel",
    "VllmLM",
    "lm_from_env",
    "loop_lm",
    "use_loop_lm",
]

