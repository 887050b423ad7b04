"""``GET /v1/requests/{id}/timeline``: the timeline of a recent request, by its request id."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from altoflow.runtime.timeline import TimelineRecorder

pytestmark = pytest.mark.timeout(60)

TRICKLE = str(Path(__file__).resolve().parent.parent / "pipelines" / "trickle.py")
JSON = {"Content-Type": "application/json"}


def _run(url: str, request_id: str | None = None, n: int = 3) -> httpx.Response:
    headers = {**JSON, **({"X-Request-Id": request_id} if request_id else {})}
    resp = httpx.post(f"{url}/v1/run", json={"n": n, "pause": 0.01}, headers=headers, timeout=30)
    assert resp.status_code == 200 and '"done"' in resp.text.splitlines()[-1]
    return resp


def test_the_timeline_of_a_request_by_the_id_its_answer_carried(serve):
    url = serve(TRICKLE)
    request_id = _run(url).headers["x-request-id"]
    resp = httpx.get(f"{url}/v1/requests/{request_id}/timeline")
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["request_id"] == request_id and doc["outcome"] == "done"
    assert [s["name"] for s in doc["stages"]] == ["claims", "verify", "total"]
    calls = [(i["stage"], i["kind"]) for i in doc["invocations"]]
    assert calls.count(("claims", "call")) == 1 and calls.count(("verify", "call")) == 3
    assert calls.count(("total", "group")) == 1
    (fan,) = [i for i in doc["invocations"] if i["stage"] == "claims"]
    assert len(fan["outputs_s"]) == 3 and fan["start_s"] <= fan["end_s"] <= doc["duration_s"]


def test_an_unknown_id_is_404_with_the_reason(serve):
    url = serve(TRICKLE)
    resp = httpx.get(f"{url}/v1/requests/no-such-request/timeline")
    assert resp.status_code == 404
    detail = resp.json()["detail"]
    assert "'no-such-request'" in detail and "--timeline-requests" in detail


def test_an_evicted_request_is_404_and_the_newer_ones_are_kept(serve):
    url = serve(TRICKLE, timeline=TimelineRecorder(requests=2))
    for name in ("a-1", "a-2", "a-3"):
        _run(url, name, n=1)
    codes = {name: httpx.get(f"{url}/v1/requests/{name}/timeline").status_code
             for name in ("a-1", "a-2", "a-3")}
    assert codes == {"a-1": 404, "a-2": 200, "a-3": 200}


def test_with_timelines_off_every_id_is_404_saying_so(serve):
    url = serve(TRICKLE, timeline=TimelineRecorder(requests=0))
    _run(url, "off-1", n=1)
    resp = httpx.get(f"{url}/v1/requests/off-1/timeline")
    assert resp.status_code == 404 and "records none" in resp.json()["detail"]
