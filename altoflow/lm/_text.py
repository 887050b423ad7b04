"""Sans-io parsers for text that arrives in arbitrary chunks.

An LM streams text in deltas whose boundaries have nothing to do with the structure of what it
writes: a line, a JSON string, even a ``\\r\\n`` pair can be split anywhere. Both parsers here
take chunks in (``feed``) and give back the pieces that are complete (lines, list elements) as
soon as the text that completes them has been seen; ``close`` is called once at the end of the
text and gives back whatever the end completes. No I/O, no event loop: the async helpers of
:class:`altoflow.lm.LM` drive them, and the tests drive them directly with every chunking.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["JsonListError", "JsonListParser", "LineSplitter"]


class LineSplitter:
    """Split streamed text into lines, each given back as soon as its newline arrives.

    Lines are returned without their ``\\n`` (and without a ``\\r`` before it). Blank lines
    (empty or only whitespace) are skipped unless ``keep_empty`` is true, because an LM that
    lists claims or queries one per line often leaves blank lines between them and a fan-out
    stage should not get empty items. The last line needs no newline: ``close()`` returns it.
    """

    __slots__ = ("_keep_empty", "_pending", "_closed")

    def __init__(self, *, keep_empty: bool = False) -> None:
        self._keep_empty = keep_empty
        self._pending: list[str] = []  # pieces of the line not yet ended by a newline
        self._closed = False

    def feed(self, chunk: str) -> list[str]:
        """Take the next piece of text; return the lines it completes, in order."""
        if self._closed:
            raise ValueError("LineSplitter.feed() was called after close()")
        if "\n" not in chunk:
            if chunk:
                self._pending.append(chunk)
            return []
        parts = chunk.split("\n")
        parts[0] = "".join(self._pending) + parts[0]
        self._pending = [parts[-1]] if parts[-1] else []
        return [line for line in map(_strip_cr, parts[:-1]) if self._wanted(line)]

    def close(self) -> list[str]:
        """End of the text: return the last line if it had no newline (and is not blank)."""
        if self._closed:
            return []
        self._closed = True
        rest = _strip_cr("".join(self._pending))
        self._pending = []
        # An empty rest means the text ended with a newline: there is no further line.
        return [rest] if rest and self._wanted(rest) else []

    @property
    def pending(self) -> str:
        """The text of the line still being written (what the next newline would complete)."""
        return "".join(self._pending)

    def _wanted(self, line: str) -> bool:
        return self._keep_empty or not line.isspace() and line != ""


def _strip_cr(line: str) -> str:
    return line[:-1] if line.endswith("\r") else line


class JsonListError(ValueError):
    """The text is not one JSON list, or it ended before the list was closed.

    ``offset`` is the position (in characters from the start of all the text fed) where the
    problem was seen, and ``elements`` the number of elements that had been parsed before it.
    """

    def __init__(self, message: str, *, offset: int, elements: int) -> None:
        super().__init__(message)
        self.offset = offset
        self.elements = elements


# JSON's own whitespace; str.isspace() is broader (it accepts \x0b, \u00a0, ...) and json.loads
# would reject those, so the parser must too.
_WS = frozenset(" \t\n\r")

# States of the parser. Rule: each state names what the next significant character may be.
_BEFORE = "before the list"  # looking for "["
_FIRST = "after '['"  # a value or "]"
_VALUE = "after ','"  # a value (not "]": no trailing commas in JSON)
_STRING = "inside a string element"
_CONTAINER = "inside an object or list element"
_SCALAR = "inside a number or literal element"
_AFTER = "after an element"  # "," or "]"
_DONE = "after the list"
_FAILED = "failed"

_CLOSER = {"[": "]", "{": "}"}


class JsonListParser:
    """Parse one JSON list from streamed text, giving back each element as soon as it closes.

    A string, object or list element is complete at its closing ``"``, ``}`` or ``]``; a
    number or ``true``/``false``/``null`` only when the ``,`` or ``]`` (or whitespace) after it
    arrives, since ``12`` could still become ``123``. Each element is decoded with
    :func:`json.loads`, so what comes back is exactly what ``json.loads`` would give for the
    whole list.

    ``lenient=False`` (the default) accepts only whitespace around the list. With
    ``lenient=True`` any text before the first ``[`` is skipped and any text after the list is
    ignored, for an LM that writes "Here are the queries:" or a Markdown code fence around it.

    Malformed input raises :class:`JsonListError` as soon as it is seen; text after the end of
    the list is only judged by ``close()``, so that a caller that stops reading once the list is
    complete (``done``) never fails on what the LM would have written after it.
    """

    __slots__ = (
        "_lenient",
        "_state",
        "_offset",
        "_count",
        "_buf",
        "_stack",
        "_escape",
        "_in_string",
        "_trailing_at",
        "_error",
    )

    def __init__(self, *, lenient: bool = False) -> None:
        self._lenient = lenient
        self._state = _BEFORE
        self._offset = 0  # characters consumed before the current chunk
        self._count = 0  # elements given back so far
        self._buf: list[str] = []  # text of the element being read
        self._stack: list[str] = []  # open brackets inside a container element
        self._escape = False  # the previous character was a backslash inside a string
        self._in_string = False  # inside a string nested in a container element
        self._trailing_at: int | None = None  # where non-whitespace after the list began
        self._error: JsonListError | None = None

    @property
    def done(self) -> bool:
        """The closing ``]`` of the list has been read: no more elements can come."""
        return self._state == _DONE

    @property
    def elements(self) -> int:
        """How many elements have been given back so far."""
        return self._count

    def feed(self, chunk: str) -> list[Any]:
        """Take the next piece of text; return the elements it completes, in order."""
        if self._error is not None:
            raise JsonListError(
                f"the parser already failed: {self._error}",
                offset=self._error.offset,
                elements=self._error.elements,
            )
        out: list[Any] = []
        try:
            self._feed(chunk, out)
        finally:
            self._offset += len(chunk)
        return out

    def close(self) -> list[Any]:
        """End of the text: check that one whole list was read.

        Every element has already been given back by ``feed`` by the time the list is closed,
        so this returns ``[]`` or raises :class:`JsonListError`.
        """
        if self._error is not None:
            raise self._error
        state = self._state
        if state == _DONE:
            if self._trailing_at is not None and not self._lenient:
                self._fail_at(
                    self._trailing_at,
                    "there is text after the end of the list; pass lenient=True to ignore it",
                )
            return []
        if state == _BEFORE:
            expected = "no '[' was found" if self._lenient else "no JSON list was found"
            self._fail_at(self._offset, f"the text ended and {expected}")
        self._fail_at(
            self._offset,
            f"the text ended inside the list ({state}) after {self._count} complete "
            "element(s); the list was never closed (did generation stop at max_tokens?)",
        )
        raise AssertionError("unreachable")  # _fail_at always raises

    # -- the state machine -------------------------------------------------------------------

    def _feed(self, chunk: str, out: list[Any]) -> None:
        i, n = 0, len(chunk)
        while i < n:
            state = self._state
            if state == _STRING:
                i = self._scan_string(chunk, i, out)
            elif state == _CONTAINER:
                i = self._scan_container(chunk, i, out)
            elif state == _SCALAR:
                i = self._scan_scalar(chunk, i, out)
            elif state == _DONE:
                if self._trailing_at is None:
                    for j in range(i, n):
                        if chunk[j] not in _WS:
                            self._trailing_at = self._offset + j
                            break
                return
            else:
                c = chunk[i]
                if c in _WS:
                    i += 1
                    continue
                if state == _BEFORE:
                    if c == "[":
                        self._state = _FIRST
                    elif not self._lenient:
                        self._fail(
                            i,
                            f"expected '[' to start a JSON list, got {c!r}; pass lenient=True "
                            "to skip text before the list",
                        )
                    i += 1
                elif state == _AFTER:
                    if c == ",":
                        self._state = _VALUE
                    elif c == "]":
                        self._state = _DONE
                    else:
                        self._fail(
                            i, f"expected ',' or ']' after element {self._count - 1}, got {c!r}"
                        )
                    i += 1
                elif c == "]":
                    if state == _VALUE:
                        self._fail(i, "a ']' follows a ','; JSON does not allow a trailing comma")
                    self._state = _DONE
                    i += 1
                elif c == ",":
                    self._fail(i, f"a ',' where element {self._count} should begin")
                else:
                    self._begin_element(c)
                    i += 1

    def _begin_element(self, c: str) -> None:
        self._buf = [c]
        if c == '"':
            self._state = _STRING
            self._escape = False
        elif c in _CLOSER:
            self._state = _CONTAINER
            self._stack = [c]
            self._in_string = False
            self._escape = False
        else:
            self._state = _SCALAR

    def _scan_string(self, chunk: str, i: int, out: list[Any]) -> int:
        n = len(chunk)
        start = i
        escape = self._escape
        while i < n:
            c = chunk[i]
            i += 1
            if escape:
                escape = False
            elif c == "\\":
                escape = True
            elif c == '"':
                self._buf.append(chunk[start:i])
                self._emit(out, i - 1)
                return i
        self._escape = escape
        self._buf.append(chunk[start:])
        return n

    def _scan_container(self, chunk: str, i: int, out: list[Any]) -> int:
        n = len(chunk)
        start = i
        stack = self._stack
        in_string, escape = self._in_string, self._escape
        while i < n:
            c = chunk[i]
            i += 1
            if in_string:
                if escape:
                    escape = False
                elif c == "\\":
                    escape = True
                elif c == '"':
                    in_string = False
            elif c == '"':
                in_string = True
            elif c in _CLOSER:
                stack.append(c)
            elif c == "]" or c == "}":
                opener = stack.pop()
                if _CLOSER[opener] != c:
                    self._buf.append(chunk[start:i])
                    self._fail(
                        i - 1,
                        f"element {self._count} opens {opener!r} but closes it with {c!r}",
                    )
                if not stack:
                    self._buf.append(chunk[start:i])
                    self._emit(out, i - 1)
                    return i
        self._in_string, self._escape = in_string, escape
        self._buf.append(chunk[start:])
        return n

    def _scan_scalar(self, chunk: str, i: int, out: list[Any]) -> int:
        n = len(chunk)
        start = i
        while i < n:
            c = chunk[i]
            if c in _WS or c == "," or c == "]":
                self._buf.append(chunk[start:i])
                self._emit(out, i - 1)
                return i  # the delimiter is read again in the _AFTER state
            i += 1
        self._buf.append(chunk[start:])
        return n

    def _emit(self, out: list[Any], at: int) -> None:
        text = "".join(self._buf)
        self._buf = []
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            self._fail(at, f"element {self._count} is not valid JSON ({exc.msg}): {_clip(text)}")
        out.append(value)
        self._count += 1
        self._state = _AFTER

    def _fail(self, i: int, message: str) -> None:
        """Fail at index ``i`` of the chunk being fed."""
        self._fail_at(self._offset + i, message)

    def _fail_at(self, offset: int, message: str) -> None:
        self._state = _FAILED
        self._error = JsonListError(
            f"malformed JSON list at character {offset}: {message}",
            offset=offset,
            elements=self._count,
        )
        raise self._error


def _clip(text: str, limit: int = 80) -> str:
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")
