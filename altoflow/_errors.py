"""Exceptions of the public surface.

Two families, kept apart on purpose: ``CompileError`` and its subclasses are *your pipeline's*
mistakes, found before anything runs; ``StageError`` is a failure *inside* a stage while a
request runs. ``InputError`` is a bad request (fields that do not fit the request schema). ``Overloaded`` is a server's answer to one request too many.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence


def where(obj: Any) -> str:
    """``file:line`` of a user's function or class, for error messages."""
    target = inspect.unwrap(obj) if callable(obj) else obj
    try:
        file = inspect.getsourcefile(target) or inspect.getfile(target)
        _, line = inspect.getsourcelines(target)
    except (TypeError, OSError):
        return "<unknown location>"
    return f"{file}:{line}"


def describe(obj: Any, name: str | None = None) -> str:
    """``'verify' (app.py:33)``: how messages name a user's stage."""
    label = name or getattr(obj, "__name__", repr(obj))
    return f"'{label}' ({where(obj)})"


class CompileError(Exception):
    """The pipeline breaks a rule of the programming model; the message says which and the fix."""


class StageDefinitionError(CompileError):
    """``@stage`` was used in a way that can be seen to be wrong at decoration time."""


class GraphError(CompileError):
    """The stages do not form a valid graph: a cycle, a clash of names, no stages at all."""


class LevelError(CompileError):
    """Nested levels do not fit: an unknown ``over``, a level opened twice, a join across branches."""


class TargetError(CompileError):
    """A target string (``app.py``, ``app.py:name``, ``pkg.mod:name``) cannot be loaded."""


class InputError(ValueError):
    """A request's fields do not fit the pipeline's request schema.

    ``errors``: the first of pydantic's errors (``loc``, ``msg``, ``type``), at most 20 of
    them; ``errors_total``: how many there were.
    """

    def __init__(self, message: str, errors: Sequence[Mapping[str, Any]] = (),
                 errors_total: int | None = None) -> None:
        super().__init__(message)
        self.errors = list(errors)
        self.errors_total = len(self.errors) if errors_total is None else errors_total


class Overloaded(Exception):
    """Every request slot of a server is taken; try again after ``retry_after`` seconds.

    The HTTP API answers it with 503 and a ``Retry-After`` header.
    """

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StageError(Exception):
    """A stage raised while processing an item under ``on_error="fail"``.

    ``stage`` is the stage's name, ``ancestry`` the item's ancestry as ``{level: index}``, and
    ``__cause__`` the exception the stage raised (``None`` when it was raised elsewhere, e.g.
    in a served request, where ``exc_type`` and ``detail`` carry what is known).
    ``traceback`` is the stage's traceback as text, from the user's frame on (the server's,
    for a served request; ``None`` when it sent none); ``request_id`` the served request's id
    (its ``X-Request-Id``), ``None`` in-process.
    """

    def __init__(
        self,
        stage: str,
        ancestry: Mapping[str, int],
        detail: str,
        exc_type: str | None = None,
        *,
        traceback: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.stage = stage
        self.ancestry = dict(ancestry)
        self.detail = detail
        self.exc_type = exc_type
        self._traceback = traceback
        self.request_id = request_id
        where_ = "/".join(f"{k}={v}" for k, v in self.ancestry.items()) or "the request"
        super().__init__(f"stage '{stage}' failed on {where_}: {detail}")

    @property
    def traceback(self) -> str | None:
        if self._traceback is None and self.__cause__ is not None:
            return user_traceback(self.__cause__)
        return self._traceback


def format_exception(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception as inner:  # an exception whose __str__ raises still gets reported
        text = f"<str() of the exception raised {type(inner).__name__}>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__



def _framework_paths() -> tuple[str, ...]:
    """Where the frames that run a stage come from (altoflow, anyio, the standard library), as
    opposed to the user's code and the libraries it calls."""
    import os
    import sysconfig

    import anyio

    here = os.path.dirname(os.path.abspath(__file__))
    return (here + os.sep, os.path.dirname(os.path.abspath(anyio.__file__)) + os.sep,
            os.path.join(sysconfig.get_paths()["stdlib"], ""))


def _is_framework(filename: str, framework: tuple[str, ...], installed: tuple[str, ...]) -> bool:
    return filename.startswith(framework) and not (
        filename.startswith(installed) and not filename.startswith(framework[:2]))


MAX_TRACEBACK = 32_000
"""The most characters of a stage's traceback that are sent on and logged (its middle goes)."""


def user_traceback(exc: BaseException) -> str:
    """The traceback of an exception a stage raised, from the user's frame on: the frames of
    altoflow's runner, anyio's threads and asyncio that led to the user's function are left
    out, so the first frame shown is the stage's own ``file:line``. Chained exceptions are
    shown as Python shows them."""
    import os
    import sysconfig
    import traceback

    framework = _framework_paths()
    installed = tuple(os.path.join(sysconfig.get_paths()[k], "") for k in ("purelib", "platlib"))
    te = traceback.TracebackException.from_exception(exc)
    seen: set[int] = set()
    todo = [te]
    while todo:
        t = todo.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        frames = list(t.stack)
        first = next((i for i, f in enumerate(frames)
                      if not _is_framework(f.filename, framework, installed)), None)
        if first:
            t.stack = traceback.StackSummary.from_list(frames[first:])
        todo += [c for c in (t.__cause__, t.__context__) if c is not None]
    text = "".join(te.format())
    if len(text) > MAX_TRACEBACK:
        half = MAX_TRACEBACK // 2
        text = (f"{text[:half]}\n  ... ({len(text) - 2 * half} characters left out) ...\n"
                f"{text[-half:]}")
    return text

