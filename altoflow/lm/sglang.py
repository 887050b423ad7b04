"""SGLang in-process (``pip install 'altoflow[sglang]'``, needs a GPU).

Written against SGLang 0.5.23's ``python/sglang/srt/entrypoints/engine.py``: ``sglang.Engine``
takes ``ServerArgs`` fields as keywords, and ``await engine.async_generate(prompt=...,
sampling_params={...}, stream=True, rid=...)`` returns an async iterator of dicts with ``text``
and ``meta_info``. The text of each chunk is everything so far, unless the engine was started
with ``incremental_streaming_output=True``, in which case it is the new part only; this adapter
reads that setting from the engine's tokenizer manager and yields deltas either way. Aborting:
SGLang's ``TokenizerManager.generate_request`` aborts a dispatched request when its generator
is closed or cancelled; this adapter closes it at once and also calls
``tokenizer_manager.abort_request(rid)``, which does nothing for a request already aborted.

Create one engine per replica, in a class stage's ``__init__``. SGLang runs on asyncio only.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from ._base import LM, ChatMessage, LMError, LMResponseError, Sampling, require

__all__ = ["SGLangLM"]


class SGLangLM(LM):
    """A model served by ``sglang.Engine`` in this process.

    ``model_path`` is a Hugging Face id or a local path; every other keyword is a SGLang
    ``ServerArgs`` field (``mem_fraction_static=0.8``, ``tp_size=2``, ...). Pass ``engine=`` to
    wrap an ``Engine`` you built. Chat prompts go through the tokenizer's chat template.
    """

    def __init__(
        self,
        model_path: str,
        *,
        sampling: Sampling | None = None,
        engine: Any = None,
        **engine_kwargs: Any,
    ) -> None:
        super().__init__(sampling=sampling)
        if engine is None:
            sglang = require("sglang", engine="SGLangLM", extra="sglang")
            engine = sglang.Engine(model_path=model_path, **engine_kwargs)
        elif engine_kwargs:
            raise TypeError("pass either engine= or engine arguments, not both")
        self.engine = engine
        self.name = model_path

    @staticmethod
    def _params(sampling: Sampling) -> dict[str, Any]:
        params: dict[str, Any] = {"max_new_tokens": sampling.max_tokens}
        if sampling.stop:
            params["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            params["sampling_seed"] = sampling.seed
        for name in ("temperature", "top_p", "top_k", "presence_penalty", "frequency_penalty"):
            value = getattr(sampling, name)
            if value is not None:
                params[name] = value
        return params

    def _prompt(self, prompt: str | tuple[ChatMessage, ...]) -> str:
        if isinstance(prompt, str):
            return prompt
        tokenizer = self.engine.tokenizer_manager.tokenizer
        return tokenizer.apply_chat_template(
            [m.as_dict() for m in prompt], tokenize=False, add_generation_prompt=True
        )

    async def _generate(
        self, prompt: str | tuple[ChatMessage, ...], sampling: Sampling
    ) -> AsyncGenerator[str, None]:
        manager = self.engine.tokenizer_manager
        incremental = bool(getattr(manager, "incremental_streaming_output", False))
        rid = f"altoflow-{uuid.uuid4().hex}"
        finished = False
        try:
            chunks = await self.engine.async_generate(
                prompt=self._prompt(prompt),
                sampling_params=self._params(sampling),
                stream=True,
                rid=rid,
            )
            seen = 0
            async with aclosing(chunks):
                async for chunk in chunks:
                    finish = (chunk.get("meta_info") or {}).get("finish_reason")
                    if isinstance(finish, dict) and finish.get("type") == "abort":
                        raise LMResponseError(
                            f"SGLang aborted request {rid}: {finish.get('message', finish)}",
                            status=finish.get("status_code"),
                            detail=str(finish.get("message", "")),
                        )
                    text = chunk.get("text") or ""
                    if incremental:
                        delta = text
                    else:
                        delta, seen = text[seen:], len(text)
                    if delta:
                        yield delta
                    if finish is not None:
                        finished = True
        except ValueError as exc:  # SGLang's validation errors (bad sampling, prompt too long)
            raise LMResponseError(f"SGLang rejected request {rid}: {exc}", detail=str(exc)) from exc
        except LMError:
            raise
        except Exception as exc:
            raise LMError(f"SGLang failed on request {rid}: {type(exc).__name__}: {exc}") from exc
        finally:
            if not finished:
                manager.abort_request(rid)  # synchronous: it only sends a message to the scheduler

    async def aclose(self) -> None:
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            shutdown()
