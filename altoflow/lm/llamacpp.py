"""llama.cpp in-process, through llama-cpp-python (``pip install 'altoflow[llamacpp]'``).

A real LM that runs on a CPU: a GGUF model file is loaded once per replica (create the engine in
a class stage's ``__init__``). llama-cpp-python generates synchronously, one token per call of
its iterator, so each token is computed in a worker thread and the event loop stays free.
Aborting stops calling the iterator and closes it: llama.cpp computes nothing more for that
request (at most the token in progress is finished first).

One ``Llama`` object holds one sequence's KV cache, so one engine runs one generation at a time
and further calls wait their turn; run more replicas for more parallelism.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import anyio
import anyio.to_thread

from ._base import LM, ChatMessage, LMResponseError, Sampling, require

__all__ = ["LlamaCppLM"]

_END = object()


class LlamaCppLM(LM):
    """A GGUF model run by llama.cpp in this process.

    ``model_path`` is the ``.gguf`` file. ``n_ctx`` is the context length (prompt plus output)
    and ``n_threads`` the CPU threads (llama.cpp's default: all physical cores). Chat prompts
    use the chat template stored in the model file, or ``chat_format`` if given. Any other
    keyword goes to ``llama_cpp.Llama``.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        chat_format: str | None = None,
        seed: int | None = None,
        verbose: bool = False,
        sampling: Sampling | None = None,
        **llama_kwargs: Any,
    ) -> None:
        super().__init__(sampling=sampling)
        llama_cpp = require("llama_cpp", engine="LlamaCppLM", extra="llamacpp")
        path = os.fspath(model_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"LlamaCppLM: no model file at {path!r} (expected a .gguf file)"
            )
        if seed is not None:
            llama_kwargs["seed"] = seed
        self._llama = llama_cpp.Llama(
            model_path=path,
            n_ctx=n_ctx,
            n_threads=n_threads,
            chat_format=chat_format,
            verbose=verbose,
            **llama_kwargs,
        )
        self.name = os.path.basename(path)
        # Created on first use: anyio primitives need a running event loop.
        self._turn: anyio.Semaphore | None = None

    @property
    def llama(self) -> Any:
        """The underlying ``llama_cpp.Llama`` (for tokenizing, counting tokens, ...)."""
        return self._llama

    async def _generate(
        self, prompt: str | tuple[ChatMessage, ...], sampling: Sampling
    ) -> AsyncGenerator[str, None]:
        if self._turn is None:
            # A semaphore, not a lock: a generator abandoned by its consumer is closed by the
            # event loop in another task, and a lock would refuse to be released there.
            self._turn = anyio.Semaphore(1)
        chat = not isinstance(prompt, str)
        async with self._turn:
            # create_*(stream=True) returns a generator: the prompt is checked and evaluated only
            # when the first chunk is asked for, so errors before any text are the request's.
            chunks = await anyio.to_thread.run_sync(self._start, prompt, sampling)
            produced = False
            try:
                while True:
                    # Computes the next token in a worker thread; a cancellation waits for it.
                    chunk = await anyio.to_thread.run_sync(next, chunks, _END)
                    if chunk is _END:
                        return
                    produced = True
                    text = _text_of(chunk, chat)
                    if text:
                        yield text
            except ValueError as exc:  # e.g. "Requested tokens (...) exceed context window"
                what = "failed mid-generation" if produced else "rejected the request"
                raise LMResponseError(f"llama.cpp {what}: {exc}", detail=str(exc)) from exc
            finally:
                # Closing the iterator ends llama.cpp's generation loop for this request.
                close = getattr(chunks, "close", None)
                if close is not None:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(close)

    def _start(self, prompt: str | tuple[ChatMessage, ...], sampling: Sampling) -> Iterator[Any]:
        params: dict[str, Any] = {
            "max_tokens": sampling.max_tokens,
            "stop": list(sampling.stop) or None,
            "stream": True,
        }
        params.update(sampling.common())
        if isinstance(prompt, str):
            return iter(self._llama.create_completion(prompt, **params))
        messages = [m.as_dict() for m in prompt]
        return iter(self._llama.create_chat_completion(messages, **params))

    async def aclose(self) -> None:
        close = getattr(self._llama, "close", None)
        if close is not None:
            close()


def _text_of(chunk: Any, chat: bool) -> str:
    choice = chunk["choices"][0]
    if chat:
        return choice.get("delta", {}).get("content") or ""
    return choice.get("text") or ""
