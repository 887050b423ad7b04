"""Log records: the two formats, request ids, and the user's traceback of a stage failure."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

import altoflow as af
from altoflow import _logging
from altoflow._errors import user_traceback

CHATTY = str(Path(__file__).resolve().parent / "pipelines" / "chatty.py")


def _failure() -> af.StageError:
    with pytest.raises(af.StageError) as info:
        af.run(CHATTY, text="fine bad")
    return info.value


def test_a_stage_traceback_starts_at_the_users_frame() -> None:
    text = user_traceback(_failure().__cause__)
    frames = [line for line in text.splitlines() if line.startswith("  File ")]
    assert frames[0].startswith(f'  File "{CHATTY}", line ') and frames[0].endswith("in checked")
    assert frames[-1].endswith("in _check")
    assert "altoflow" not in "".join(frames) and "anyio" not in "".join(frames)
    assert text.rstrip().endswith("ValueError: cannot check 'bad'")


def test_stage_error_has_the_traceback_in_process_too() -> None:
    err = _failure()
    assert err.traceback == user_traceback(err.__cause__)
    assert err.request_id is None


def _record(stream: io.StringIO, format: str) -> str:
    handler = _logging.configure("info", format, replica="checked#1", stream=stream)
    try:
        token = _logging.REQUEST_ID.set("req-7")
        try:
            logging.getLogger("altoflow.test").info("in a request")
        finally:
            _logging.REQUEST_ID.reset(token)
        _logging.log_stage_failure(logging.getLogger("altoflow.router"), "req-8", "checked",
                                   {"word": 1}, "ValueError: no",
                                   'Traceback (most recent call last):\n'
                                   '  File "/app.py", line 14, in checked\n    raise\nValueError: no\n')
    finally:
        logging.getLogger().removeHandler(handler)
    return stream.getvalue()


def test_json_format_is_one_object_per_line_with_the_request_fields() -> None:
    lines = [json.loads(line) for line in _record(io.StringIO(), "json").splitlines()]
    first, failure = lines
    assert set(first) == {"time", "level", "logger", "message", "request_id", "replica"}
    assert first["request_id"] == "req-7" and first["replica"] == "checked#1"
    assert first["level"] == "INFO" and first["logger"] == "altoflow.test"
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert failure["level"] == "ERROR" and failure["request_id"] == "req-8"
    assert failure["stage"] == "checked" and failure["ancestry"] == {"word": 1}
    assert failure["message"] == ("request req-8: stage 'checked' failed on word=1 at "
                                  "/app.py:14 in checked: ValueError: no")
    assert failure["traceback"].startswith("Traceback")


def test_text_format_names_the_request_stage_and_ancestry() -> None:
    text = _record(io.StringIO(), "text")
    first, failure, *tb = text.splitlines()
    assert first.endswith("INFO altoflow.test [replica=checked#1 request=req-7] in a request")
    assert "ERROR altoflow.router [replica=checked#1 request=req-8 stage=checked word=1] " \
           "request req-8: stage 'checked' failed on word=1 at /app.py:14 in checked" in failure
    assert tb[0] == "Traceback (most recent call last):" and tb[-1] == "ValueError: no"


@pytest.mark.parametrize(("value", "ok"), [
    ("abc-123", True), ("a" * 128, True), ("a" * 129, False), ("", False), (None, False),
    ("has space", False), ("tab\there", False), ("new\nline", False), ("é", False),
])
def test_a_client_request_id_is_taken_only_when_short_and_printable(value, ok) -> None:
    assert _logging.valid_request_id(value) is ok


def test_new_request_ids_are_valid_and_differ() -> None:
    a, b = _logging.new_request_id(), _logging.new_request_id()
    assert a != b and _logging.valid_request_id(a) and len(a) == 32


def test_http_clients_per_call_lines_show_only_at_debug() -> None:
    stream = io.StringIO()
    try:
        _logging.configure("info", stream=stream)
        logging.getLogger("httpx").info("HTTP Request: POST http://lm/v1/completions")
        logging.getLogger("altoflow.server").info("kept")
        assert "HTTP Request" not in stream.getvalue() and "kept" in stream.getvalue()
        _logging.configure("debug", stream=stream)
        logging.getLogger("httpx").info("HTTP Request: POST http://lm/v1/completions")
        assert "HTTP Request" in stream.getvalue()
    finally:
        _logging.configure("info")


def test_configure_refuses_an_unknown_level_or_format() -> None:
    with pytest.raises(ValueError, match="take one of debug"):
        _logging.configure("loud")
    with pytest.raises(ValueError, match="text or json"):
        _logging.configure("info", "xml")  # type: ignore[arg-type]
