"""What a hostile or careless client can send POST /v1/run: each gets a short 4xx that says what
is wrong, the server goes on serving, and served and in-process take the same values."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import altoflow as af
from altoflow import stage
from altoflow.compiler._request import MAX_DEPTH, MAX_ERRORS
from altoflow.server import LocalIngress, create_app, serve_in_thread
from altoflow.server.http import DISCARD_MAX

pytestmark = pytest.mark.timeout(60)

WORDCOUNT = str(Path(__file__).resolve().parent.parent / "pipelines" / "wordcount.py")
JSON = {"Content-Type": "application/json"}
MAX_BODY = 256 * 1024


@stage(output=True)
def depth(blob: Any) -> int:
    """How deep ``blob`` nests lists and dicts."""
    d, level = 0, [blob]
    while level:
        level = [x for v in level if isinstance(v, (list, dict))
                 for x in (v.values() if isinstance(v, dict) else v)]
        d += 1
    return d - 1


measure = af.Pipeline([depth], name="measure")


def nested(n: int) -> Any:
    value: Any = 0
    for _ in range(n):
        value = [value]
    return value


def unlimited_json(value: Any) -> str:
    """JSON as a client in another language would write it: json.dumps itself refuses ints
    past Python's limit of digits."""
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return json.dumps(value)
    finally:
        sys.set_int_max_str_digits(limit)


@pytest.fixture
def url():
    with serve_in_thread(create_app(LocalIngress(measure), max_body=MAX_BODY)) as base:
        yield base


def post(url: str, body: bytes | str, http: httpx.Client | None = None, **headers: str) -> httpx.Response:
    sender = http or httpx
    return sender.post(url + "/v1/run", content=body, headers={**JSON, **headers}, timeout=30)


def served(url: str, body: str) -> tuple[int, Any]:
    """(status, the output's value or the 422 detail), as the server answers."""
    resp = post(url, body)
    if resp.status_code != 200:
        return resp.status_code, resp.json()["detail"]
    lines = [json.loads(line) for line in resp.text.splitlines()]
    assert lines[-1] == {"type": "done", "request_id": resp.headers["x-request-id"]}, lines
    return 200, lines[0]["value"]


def in_process(fields: dict[str, Any]) -> tuple[int, Any]:
    try:
        return 200, af.run(measure, **fields)["depth"]
    except af.InputError as exc:
        return 422, str(exc)


# -- served and in-process take the same values --------------------------------------------------


@pytest.mark.parametrize(("value", "ok"), [
    pytest.param(nested(MAX_DEPTH), True, id="nested-at-the-limit"),
    pytest.param(nested(MAX_DEPTH + 1), False, id="nested-past-the-limit"),
    pytest.param({"a": [{"b": nested(MAX_DEPTH - 3)}]}, True, id="dicts-and-lists-at-the-limit"),
    pytest.param({"a": [{"b": nested(MAX_DEPTH - 2)}]}, False, id="dicts-and-lists-past-it"),
    pytest.param(10**4299, True, id="int-of-4300-digits"),
    pytest.param([-(10**4300)], False, id="int-of-4301-digits"),
])
def test_served_and_in_process_take_the_same_values(url, value, ok: bool) -> None:
    text = unlimited_json({"blob": value})
    got_served, got_local = served(url, text), in_process({"blob": value})
    assert got_served[0] == got_local[0] == (200 if ok else 422)
    if ok:
        assert got_served[1] == got_local[1]
    else:
        for detail in (got_served[1], got_local[1]):
            assert any(all(w in detail for w in words) for words in (
                ["more than 4300 digits", "send it as a string"],
                ["request field 'blob'", f"may nest at most {MAX_DEPTH}"])), detail


# -- hostile JSON: 422 with a message, and the connection goes on --------------------------------


@pytest.mark.parametrize(("body", "words"), [
    pytest.param('{"blob": ' + "1" * 5000 + "}", ["more than 4300 digits", "as a string"],
                 id="int-of-5000-digits"),
    pytest.param('{"blob": ' + "[" * 100_000 + "]" * 100_000 + "}", [f"at most {MAX_DEPTH}"],
                 id="nested-100k-deep"),
    pytest.param('{"blob": ' + "{\"a\": " * 30_000 + "1" + "}" * 30_001, [f"at most {MAX_DEPTH}"],
                 id="objects-30k-deep"),
    pytest.param('{"blob": ' + "[" * 500 + "]" * 500 + "}", [f"at most {MAX_DEPTH}", "'blob'"],
                 id="nested-500-deep"),
    pytest.param(b'{"blob": "\xff"}', ["not UTF-8"], id="not-utf8"),
])
def test_hostile_json_gets_422_and_the_connection_serves_on(url, body, words) -> None:
    with httpx.Client(timeout=30) as http:
        resp = post(url, body, http)
        assert resp.status_code == 422, resp.text[:300]
        for w in words:
            assert w in resp.json()["detail"]
        assert resp.headers.get("connection") != "close"
        after = post(url, '{"blob": [1]}', http)
        assert after.status_code == 200 and json.loads(after.text.splitlines()[-1]) == {
            "type": "done", "request_id": after.headers["x-request-id"]}


def test_200k_unknown_keys_get_a_short_answer() -> None:
    body = json.dumps({"text": "a b", **{f"k{i}": i for i in range(200_000)}})
    assert len(body) > 3_000_000
    with serve_in_thread(create_app(LocalIngress(WORDCOUNT), max_body=8 * 1024 * 1024)) as url:
        resp = post(url, body)
    assert resp.status_code == 422
    assert len(resp.content) < 4096
    detail = resp.json()["detail"]
    assert "200000 fields it does not have: 'k0', 'k1'" in detail
    assert f"and {200_000 - MAX_ERRORS} more" in detail and "its fields are: text" in detail


def test_many_wrong_items_get_the_first_errors_and_their_count() -> None:
    @stage
    def total(numbers: list[int]) -> int:
        return sum(numbers)

    pipeline = af.Pipeline([total], name="totals")
    with serve_in_thread(create_app(LocalIngress(pipeline))) as url:
        resp = post(url, json.dumps({"numbers": ["x"] * 10_000}))
    assert resp.status_code == 422 and len(resp.content) < 16 * 1024
    answer = resp.json()
    assert answer["errors_total"] == 10_000
    assert len(answer["errors"]) == MAX_ERRORS
    assert answer["errors"][0] == {"loc": ["numbers", 0], "type": "int_parsing",
                                   "msg": "Input should be a valid integer, unable to parse "
                                          "string as an integer"}
    assert answer["detail"].endswith(f"... and {10_000 - MAX_ERRORS} more")


# -- body size --------------------------------------------------------------------------------


def test_a_body_over_max_body_gets_413(url) -> None:
    resp = post(url, json.dumps({"blob": "x" * MAX_BODY}))
    assert resp.status_code == 413
    assert f"{MAX_BODY} bytes" in resp.json()["detail"] and "--max-body" in resp.json()["detail"]
    assert served(url, json.dumps({"blob": "x" * (MAX_BODY - 20)})) == (200, 0)


def test_a_chunked_body_over_max_body_gets_413(url) -> None:
    def chunks():  # no Content-Length: httpx sends it chunked
        yield b'{"blob": "'
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"x" * 1024
        yield b'"}'

    resp = httpx.post(url + "/v1/run", content=chunks(), headers=JSON, timeout=30)
    assert resp.status_code == 413


@pytest.mark.parametrize("chunked", [False, True])
def test_a_client_that_sends_all_of_a_large_body_reads_its_413(url, chunked) -> None:
    # httpx, requests and urllib send the whole body before they read the answer: a server
    # that closes with the body unread resets the connection, and the 413 is lost with it.
    body = json.dumps({"blob": "x" * (32 * MAX_BODY)}).encode()

    async def chunks():
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]

    async def main() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(3):
                resp = await client.post(url + "/v1/run", content=chunks() if chunked else body,
                                         headers=JSON)
                assert resp.status_code == 413, resp.text
                assert "--max-body" in resp.json()["detail"]

    anyio.run(main)


def test_reading_an_endless_body_stops() -> None:
    # Straight to the ASGI app: an endless body is kept no further than the limit, and read
    # (thrown away, for the client's sake) no further than DISCARD_MAX past it.
    app = create_app(LocalIngress(measure), max_body=10_000)
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"[" * 1000, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/run", "raw_path": b"/v1/run",
             "query_string": b"", "root_path": "", "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                         (b"transfer-encoding", b"chunked")]}
    anyio.run(app, scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert pulled <= (10_000 + DISCARD_MAX) // 1000 + 2


def test_a_body_announced_far_past_the_limit_is_not_read() -> None:
    # Content-Length says it is more than DISCARD_MAX bytes over: answered 413 at once.
    app = create_app(LocalIngress(measure), max_body=10_000)
    sent: list[dict] = []

    async def receive() -> dict:
        raise AssertionError("read a body whose Content-Length is past what is discarded")

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/run", "raw_path": b"/v1/run",
             "query_string": b"", "root_path": "", "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                         (b"content-length", str(DISCARD_MAX + 1).encode())]}
    anyio.run(app, scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413


# -- Host and content type -------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_a_run_needs_a_json_content_type(url, content_type) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    resp = httpx.post(url + "/v1/run", content=b'{"blob": 1}', headers=headers, timeout=30)
    assert resp.status_code == 415
    assert "Content-Type: application/json" in resp.json()["detail"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON",
                                          "application/vnd.api+json"])
def test_json_content_types_are_taken(url, content_type) -> None:
    assert post(url, '{"blob": [1]}', **{"Content-Type": content_type}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "localhost.evil.example",
                                  "10.1.2.3"])
def test_a_foreign_host_gets_400_on_every_route(url, host) -> None:
    for method, path in [("POST", "/v1/run"), ("GET", "/v1/graph"), ("GET", "/metrics"),
                         ("GET", "/healthz")]:
        resp = httpx.request(method, url + path, content=b'{"blob": 1}',
                             headers={**JSON, "Host": host}, timeout=30)
        assert resp.status_code == 400, (path, resp.text)
        assert "--allowed-host" in resp.json()["detail"] and host in resp.json()["detail"]


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:8000", "127.0.0.1", "127.0.0.1:1",
                                  "app.localhost"])
def test_loopback_names_are_taken_on_a_loopback_address(url, host) -> None:
    resp = post(url, '{"blob": [1]}', Host=host)
    assert resp.status_code == 200


def test_allowed_hosts_adds_names() -> None:
    app = create_app(LocalIngress(measure), allowed_hosts=["api.example.com", "[::2]:80"])
    with serve_in_thread(app) as url:
        assert post(url, '{"blob": 1}', Host="api.example.com:443").status_code == 200
        assert post(url, '{"blob": 1}', Host="[::2]").status_code == 200
        assert post(url, '{"blob": 1}', Host="other.example.com").status_code == 400
    with serve_in_thread(create_app(LocalIngress(measure), allowed_hosts=["*"])) as url:
        assert post(url, '{"blob": 1}', Host="anything.example").status_code == 200
