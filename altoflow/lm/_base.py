"""The one LM interface every engine implements.

An engine implements a single method, ``_generate``: an async generator of text deltas for one
prompt. Everything a stage uses (``complete``, ``stream``, ``stream_lines``,
``stream_json_list``) is built once, here, on top of it, so every engine streams lines and JSON
elements the same way and aborts the same way.

Aborting. A generation is aborted in the engine when the consumer stops early: ``aclose()`` on
the stream, leaving an ``async with`` block around it, or cancelling the task that iterates it
all close the engine's generator, whose ``finally`` tells the engine to stop (closes the HTTP
response, calls ``abort(request_id)``, stops the decode loop). A plain ``break`` out of
``async for`` works too, but only once the abandoned generator is finalised (CPython does it
right away, on the event loop's next turn); use ``async with lm.stream(...) as s:`` where the
moment matters.
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

from altoflow._partial import MAX_DELTA_CHARS, partial as _partial, watched as _watched

from ._text import JsonListParser, LineSplitter

__all__ = [
    "ChatMessage",
    "EngineNotInstalledError",
    "LM",
    "LMConnectionError",
    "LMError",
    "LMProtocolError",
    "LMResponseError",
    "LMStream",
    "LMTimeoutError",
    "Prompt",
    "Sampling",
    "normalize_prompt",
    "prompt_text",
]


T = TypeVar("T")


# -- errors ----------------------------------------------------------------------------------


class LMError(Exception):
    """An LM call failed. The subclasses say whose side the failure is on."""


class LMConnectionError(LMError):
    """The engine could not be reached, or the connection to it broke mid-response."""


class LMTimeoutError(LMConnectionError):
    """The engine did not answer (or send the next token) in time."""


class LMResponseError(LMError):
    """The engine answered with an error: a bad request, an unknown model, an overload.

    ``status`` is the HTTP status where there is one (``None`` for in-process engines), ``url``
    the address that answered, and ``detail`` the engine's own message.
    """

    def __init__(
        self, message: str, *, status: int | None = None, url: str | None = None, detail: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.url = url
        self.detail = detail


class LMProtocolError(LMError):
    """The engine's answer could not be understood (malformed SSE or JSON): the peer's fault."""


class EngineNotInstalledError(ImportError):
    """An engine's library is not installed; the message says which extra installs it."""

    def __init__(self, engine: str, module: str, extra: str, cause: BaseException) -> None:
        super().__init__(
            f"{engine} needs the '{module}' package, which could not be imported ({cause}). "
            f"Install it with: pip install 'altoflow[{extra}]'",
            name=module,
        )
        self.extra = extra


def require(module: str, *, engine: str, extra: str) -> Any:
    """Import an engine's library on first use, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EngineNotInstalledError(engine, module, extra, exc) from exc


# -- prompts ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a chat prompt, in the OpenAI shape (``role`` and ``content``)."""

    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


#: A completion prompt (``str``) or a chat prompt (a sequence of messages, each a
#: :class:`ChatMessage` or a mapping with ``role`` and ``content``).
Prompt = str | Sequence[ChatMessage | Mapping[str, str]]

_PROMPT_HINT = (
    "pass a string for a completion prompt, or a list of messages for a chat prompt, e.g. "
    "[{'role': 'system', 'content': '...'}, {'role': 'user', 'content': '...'}]"
)


def normalize_prompt(prompt: Prompt) -> str | tuple[ChatMessage, ...]:
    """Check a prompt and give it one shape: ``str`` or a tuple of :class:`ChatMessage`."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (bytes, bytearray)):
        raise TypeError(f"the prompt is bytes; decode it first. {_PROMPT_HINT}")
    if not isinstance(prompt, Sequence):
        raise TypeError(f"the prompt is a {type(prompt).__name__}; {_PROMPT_HINT}")
    if not prompt:
        raise ValueError(f"the chat prompt has no messages; {_PROMPT_HINT}")
    messages = []
    for i, message in enumerate(prompt):
        if isinstance(message, ChatMessage):
            messages.append(message)
            continue
        if not isinstance(message, Mapping):
            raise TypeError(
                f"message {i} of the chat prompt is a {type(message).__name__}, not a mapping; "
                + _PROMPT_HINT
            )
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise TypeError(
                f"message {i} of the chat prompt needs string 'role' and 'content', got "
                f"{dict(message)!r}; " + _PROMPT_HINT
            )
        messages.append(ChatMessage(role, content))
    return tuple(messages)


def prompt_text(prompt: str | tuple[ChatMessage, ...]) -> str:
    """A plain-text view of a prompt (for engines without a chat template, and for logs)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.role}: {m.content}" for m in prompt)


# -- sampling --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sampling:
    """Sampling parameters of one call. ``None`` leaves a parameter to the engine's default.

    ``max_tokens`` defaults to 256 rather than to each engine's own default, because those
    differ wildly (16 for OpenAI-style completions and llama-cpp-python, 128 for SGLang, the
    whole context for chat APIs); pass ``max_tokens=None`` for the engine's own limit.
    """

    max_tokens: int | None = 256
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def __post_init__(self) -> None:
        stop = self.stop
        if isinstance(stop, str):
            stop = (stop,)
        elif stop is None:
            stop = ()
        else:
            stop = tuple(stop)
        if not all(isinstance(s, str) and s for s in stop):
            raise ValueError(
                f"stop must be a string or a list of non-empty strings, got {self.stop!r}"
            )
        object.__setattr__(self, "stop", stop)
        _check_int(self, "max_tokens", minimum=0)
        _check_int(self, "top_k", minimum=1)
        _check_int(self, "seed", minimum=None)
        _check_float(self, "temperature", 0.0, 2.0)
        _check_float(self, "top_p", 0.0, 1.0, open_low=True)
        _check_float(self, "presence_penalty", -2.0, 2.0)
        _check_float(self, "frequency_penalty", -2.0, 2.0)

    # The knobs every engine names the same way; each engine adds its own spelling of the rest.
    COMMON = ("temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty")

    def common(self) -> dict[str, Any]:
        """The common knobs that are set (not ``None``), by their shared names."""
        return {name: getattr(self, name) for name in self.COMMON if getattr(self, name) is not None}

    def replace(self, **overrides: Any) -> Sampling:
        """A copy with some parameters changed; unknown names are a ``TypeError``."""
        if not overrides:
            return self
        unknown = [name for name in overrides if name not in _SAMPLING_FIELDS]
        if unknown:
            name = unknown[0]
            close = difflib.get_close_matches(name, _SAMPLING_FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(
                f"unknown sampling parameter {name!r}{hint}; the parameters are: "
                + ", ".join(_SAMPLING_FIELDS)
            )
        return dataclasses.replace(self, **overrides)

    def as_openai(self) -> dict[str, Any]:
        """The parameters that are set, under their OpenAI API names."""
        body: dict[str, Any] = {}
        for name in _SAMPLING_FIELDS:
            value = getattr(self, name)
            if name == "stop":
                if value:
                    body["stop"] = list(value)
            elif value is not None:
                body[name] = value
        return body


_SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(Sampling))


def _check_int(s: Sampling, name: str, *, minimum: int | None) -> None:
    value = getattr(s, name)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer or None, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def _check_float(
    s: Sampling, name: str, low: float, high: float, *, open_low: bool = False
) -> None:
    value = getattr(s, name)
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number or None, got {value!r}")
    too_low = value <= low if open_low else value < low
    if too_low or value > high:
        bracket = "(" if open_low else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}")


# -- streams ---------------------------------------------------------------------------------

C = TypeVar("C", bound="_Closes")


class _Closes:
    """``async with x:`` ends by ``await x.aclose()``, however the block is left."""

    __slots__ = ()

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self: C) -> C:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class LMStream(_Closes, Generic[T]):
    """What ``stream``, ``stream_lines`` and ``stream_json_list`` return.

    An async iterator that is also an async context manager: leaving the ``async with`` block,
    or calling :meth:`aclose`, aborts the generation in the engine at once.
    """

    __slots__ = ("_agen",)

    def __init__(self, agen: AsyncGenerator[T, None]) -> None:
        self._agen = agen

    def __aiter__(self) -> LMStream[T]:
        return self

    async def __anext__(self) -> T:
        return await self._agen.__anext__()

    async def aclose(self) -> None:
        """Stop the generation (a no-op once it has ended)."""
        await self._agen.aclose()


class LM(_Closes, abc.ABC):
    """A language model engine.

    ``complete(prompt)`` returns the whole text; ``stream(prompt)`` yields text deltas;
    ``stream_lines(prompt)`` yields each line as soon as its newline is generated, and
    ``stream_json_list(prompt)`` each element of a JSON list as soon as it closes. A prompt is a
    string (completion) or a list of messages (chat). Sampling parameters (:class:`Sampling`'s
    fields, e.g. ``max_tokens=64, temperature=0``) can be given per call; the engine's
    ``sampling`` holds the defaults.
    """

    #: The model's name, for logs and errors.
    name: str = "lm"
    #: True only for :class:`altoflow.lm.SimulatedLM`, so that reports can say so.
    simulated: bool = False

    def __init__(self, *, sampling: Sampling | None = None) -> None:
        self.sampling = sampling if sampling is not None else Sampling()

    @abc.abstractmethod
    def _generate(
        self, prompt: str | tuple[ChatMessage, ...], sampling: Sampling
    ) -> AsyncGenerator[str, None]:
        """Yield the text deltas of one generation.

        Must abort the engine's request when closed early (``GeneratorExit``) or cancelled.
        """

    def stream(self, prompt: Prompt, **sampling: Any) -> LMStream[str]:
        """Stream the text deltas of one generation (empty deltas are dropped)."""
        return LMStream(self._deltas(normalize_prompt(prompt), self.sampling.replace(**sampling)))

    async def complete(self, prompt: Prompt, *, partial: bool = False, **sampling: Any) -> str:
        """Generate and return the whole text.

        ``partial=True`` also streams each text delta, as the engine writes it, to the client
        as ``altoflow.partial`` events of the stage that calls this (an answer shown token by
        token in a chat UI, while the next stages get the whole text). Outside a stage's
        invocation (a stage called as a plain function, in a unit test), and in one that nobody
        watches (``altoflow.run``, a request sent with ``partials=false``), there is nobody to
        stream to, and it only returns the text.
        """
        send = _partial if partial and _watched() else None
        parts = []
        async with self.stream(prompt, **sampling) as deltas:
            async for delta in deltas:
                parts.append(delta)
                if send is not None:
                    for start in range(0, len(delta), MAX_DELTA_CHARS):  # one piece, but for
                        send(delta[start:start + MAX_DELTA_CHARS])      # an engine's odd delta
        return "".join(parts)

    def stream_lines(
        self, prompt: Prompt, *, keep_empty: bool = False, **sampling: Any
    ) -> LMStream[str]:
        """Yield each line of the output as soon as its newline is generated.

        Lines come without their newline; blank lines are skipped unless ``keep_empty``. The
        last line is yielded when the generation ends, newline or not.
        """
        deltas = self.stream(prompt, **sampling)
        return LMStream(_lines(deltas, LineSplitter(keep_empty=keep_empty)))

    def stream_json_list(
        self, prompt: Prompt, *, lenient: bool = False, **sampling: Any
    ) -> LMStream[Any]:
        """Yield each element of the JSON list the LM writes, as soon as the element closes.

        The generation is stopped as soon as the list's closing ``]`` arrives, so whatever the
        LM would have written after the list is neither generated nor read. Malformed output,
        or output that ends before the list closes, raises :class:`~altoflow.lm.JsonListError`.
        ``lenient=True`` skips text before the list (see :class:`~altoflow.lm.JsonListParser`).
        """
        deltas = self.stream(prompt, **sampling)
        return LMStream(_json_elements(deltas, JsonListParser(lenient=lenient)))

    async def aclose(self) -> None:
        """Release the engine's resources (connections, processes). Engines override this."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    async def _deltas(
        self, prompt: str | tuple[ChatMessage, ...], sampling: Sampling
    ) -> AsyncGenerator[str, None]:
        gen = self._generate(prompt, sampling)
        try:
            async for delta in gen:
                if delta:
                    yield delta
        finally:
            # Close the engine's generator now, not when it is garbage collected: its finally
            # is what aborts the request in the engine.
            await gen.aclose()


async def _lines(deltas: LMStream[str], splitter: LineSplitter) -> AsyncGenerator[str, None]:
    async with deltas:
        async for delta in deltas:
            for line in splitter.feed(delta):
                yield line
    for line in splitter.close():
        yield line


async def _json_elements(
    deltas: LMStream[str], parser: JsonListParser
) -> AsyncGenerator[Any, None]:
    async with deltas:
        async for delta in deltas:
            for element in parser.feed(delta):
                yield element
            if parser.done:
                return  # leaving the block aborts the rest of the generation
    parser.close()
