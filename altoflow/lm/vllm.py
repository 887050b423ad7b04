"""vLLM in-process (``pip install 'altoflow[vllm]'``, needs a GPU).

Written against vLLM 0.33.0's ``vllm/v1/engine/async_llm.py``: an ``AsyncLLM`` built from
``AsyncEngineArgs``, ``generate(prompt, SamplingParams(output_kind=DELTA), request_id)`` as an
async generator of ``RequestOutput`` whose ``outputs[0].text`` is the new text only, and
``abort(request_id)``. vLLM's ``generate`` aborts the request itself when it is closed or
cancelled (``except (asyncio.CancelledError, GeneratorExit)``); this adapter closes it at once
with ``aclosing`` rather than leaving that to the garbage collector, and aborts explicitly as
well when the generation did not finish, which is harmless if vLLM already did.

Create one engine per replica, in a class stage's ``__init__``: the engine owns the GPU. vLLM
runs on asyncio only.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import anyio

from ._base import LM, ChatMessage, LMError, LMResponseError, Sampling, require

__all__ = ["VllmLM"]


class VllmLM(LM):
    """A model served by vLLM's ``AsyncLLM`` in this process.

    ``model`` is a Hugging Face id or a local path; every other keyword is an
    ``AsyncEngineArgs`` field (``gpu_memory_utilization=0.8``, ``max_model_len=8192``,
    ``tensor_parallel_size=2``, ...). Pass ``engine=`` to wrap an ``AsyncLLM`` you built.
    Chat prompts go through the model's chat template (the tokenizer's
    ``apply_chat_template``).
    """

    def __init__(
        self,
        model: str,
        *,
        sampling: Sampling | None = None,
        engine: Any = None,
        **engine_args: Any,
    ) -> None:
        super().__init__(sampling=sampling)
        self._vllm = require("vllm", engine="VllmLM", extra="vllm")
        if engine is None:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

            engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=model, **engine_args))
        elif engine_args:
            raise TypeError("pass either engine= or engine arguments, not both")
        self.engine = engine
        self.name = model

    def _params(self, sampling: Sampling) -> Any:
        from vllm.sampling_params import RequestOutputKind

        kwargs: dict[str, Any] = {
            "max_tokens": sampling.max_tokens,
            "output_kind": RequestOutputKind.DELTA,
        }
        if sampling.stop:
            kwargs["stop"] = list(sampling.stop)
        kwargs.update(sampling.common())
        return self._vllm.SamplingParams(**kwargs)

    async def _prompt(self, prompt: str | tuple[ChatMessage, ...]) -> str:
        if isinstance(prompt, str):
            return prompt
        tokenizer = self.engine.get_tokenizer()
        if inspect.isawaitable(tokenizer):  # older vLLM releases had an async get_tokenizer()
            tokenizer = await tokenizer
        return tokenizer.apply_chat_template(
            [m.as_dict() for m in prompt], tokenize=False, add_generation_prompt=True
        )

    async def _generate(
        self, prompt: str | tuple[ChatMessage, ...], sampling: Sampling
    ) -> AsyncGenerator[str, None]:
        rejected = _client_errors()
        try:
            params = self._params(sampling)
        except rejected as exc:
            raise LMResponseError(
                f"vLLM rejected the sampling parameters: {exc}", detail=str(exc)
            ) from exc
        text = await self._prompt(prompt)
        request_id = f"altoflow-{uuid.uuid4().hex}"
        finished = False
        try:
            async with aclosing(self.engine.generate(text, params, request_id)) as outputs:
                async for output in outputs:
                    for completion in output.outputs[:1]:
                        if completion.text:
                            yield completion.text
                    finished = output.finished
        except rejected as exc:
            raise LMResponseError(
                f"vLLM rejected request {request_id}: {exc}", detail=str(exc)
            ) from exc
        except LMError:
            raise
        except Exception as exc:
            raise LMError(
                f"vLLM failed on request {request_id}: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            if not finished:
                # Shielded: under an anyio cancel scope every await in a cancelled task is
                # cancelled again, which would skip the abort.
                with anyio.CancelScope(shield=True):
                    await self.engine.abort(request_id)

    async def aclose(self) -> None:
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            shutdown()


def _client_errors() -> tuple[type[BaseException], ...]:
    """What vLLM raises for a bad request: ``VLLMClientError`` (0.33.0: validation errors are
    ``VLLMValidationError``, which is not a ``ValueError``) and plain ``ValueError``."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # releases before vllm.exceptions existed
        return (ValueError,)
    return (ValueError, VLLMClientError)
