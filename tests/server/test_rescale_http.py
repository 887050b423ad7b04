"""``PUT /v1/stages/{stage}/replicas`` and ``GET /v1/stages``, and ``altoflow scale``.

The admin route changes the server, so it is off unless the app has an admin token (403), and
takes only requests that carry that token (401); it names an unknown stage's alternatives
(404) and the field of a bad body (422); the in-process runtime refuses it (409).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

import altoflow as af
from altoflow.cli import app as cli_app
from altoflow.client import Client
from altoflow.server import LocalIngress, ServedIngress, create_app, serve_in_thread

SCALED = str(Path(__file__).resolve().parent.parent / "pipelines" / "scaled.py")
TOKEN = "a-long-admin-token-for-tests"


@pytest.fixture(scope="module")
def url():
    ingress = ServedIngress(SCALED, inline=frozenset({"all"}))
    with serve_in_thread(create_app(ingress, admin_token=TOKEN)) as base:
        yield base


def _put(url: str, stage: str, body, token: str | None = TOKEN, **kw) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.put(f"{url}/v1/stages/{stage}/replicas", json=body, headers=headers, **kw)


def test_a_rescale_answers_the_stages_slots_and_results_stay_exact(url: str) -> None:
    answer = _put(url, "per_item", {"replicas": 3})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["stage"] == "per_item" and body["desired"] == 3
    assert [s["slot"] for s in body["slots"]] == [0, 1, 2]
    stages = {s["stage"]: s for s in httpx.get(f"{url}/v1/stages").json()["stages"]}
    assert stages["per_item"]["desired"] == 3 and stages["work"]["desired"] == 1
    assert Client(url).run(n=12).to_dict() == af.run(SCALED, n=12).to_dict()
    answer = _put(url, "per_item", {"replicas": 1})
    assert answer.status_code == 200 and answer.json()["desired"] == 1
    assert Client(url).run(n=5).to_dict() == af.run(SCALED, n=5).to_dict()
    health = httpx.get(f"{url}/healthz").json()
    assert health["replicas"]["per_item"]["desired"] == 1


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x"])
def test_without_the_admin_token_a_rescale_is_refused_401(url: str, token) -> None:
    answer = _put(url, "work", {"replicas": 2}, token=token)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert "missing or wrong admin token" in answer.json()["detail"]
    assert {s["stage"]: s["desired"] for s in httpx.get(f"{url}/v1/stages").json()["stages"]}["work"] == 1


def test_an_unknown_stage_is_404_naming_the_stages(url: str) -> None:
    answer = _put(url, "nope", {"replicas": 2})
    assert answer.status_code == 404
    assert answer.json()["detail"] == ("no stage named 'nope'; stages: items, work, squares, "
                                       "parts, per_item")


@pytest.mark.parametrize("body", [{"replicas": 0}, {"replicas": "2"}, {"replicas": True},
                                  {"replicas": 1.5}, {}, [2], None])
def test_a_bad_count_is_422_naming_the_field(url: str, body) -> None:
    answer = _put(url, "work", body)
    assert answer.status_code == 422
    detail = answer.json()
    assert "a whole number `replicas` >= 1" in detail["detail"]
    assert detail["errors"][0]["loc"] == ["body", "replicas"]


def test_a_server_without_an_admin_token_refuses_rescales_403_naming_the_option() -> None:
    with serve_in_thread(create_app(ServedIngress(SCALED, inline=frozenset({"all"})))) as url:
        answer = _put(url, "work", {"replicas": 2})
        assert answer.status_code == 403
        assert "--admin-token-file" in answer.json()["detail"]
        assert httpx.get(f"{url}/v1/stages").status_code == 200


def test_the_in_process_runtime_refuses_rescales_409() -> None:
    with serve_in_thread(create_app(LocalIngress(SCALED), admin_token=TOKEN)) as url:
        answer = _put(url, "work", {"replicas": 2})
        assert answer.status_code == 409
        assert "altoflow serve" in answer.json()["detail"]
        stages = httpx.get(f"{url}/v1/stages").json()["stages"]
        assert stages[1] == {"stage": "work", "desired": 1, "ready": 1, "draining": 0,
                             "slots": [{"slot": 0, "state": "ready"}]}


def test_an_empty_admin_token_is_refused() -> None:
    with pytest.raises(ValueError, match="admin_token is empty"):
        create_app(LocalIngress(SCALED), admin_token="  ")


# -- altoflow scale ----------------------------------------------------------------------------

runner = CliRunner()


def test_altoflow_scale_prints_the_new_state(url: str, tmp_path: Path) -> None:
    token = tmp_path / "admin.token"
    token.write_text(TOKEN + "\n")
    result = runner.invoke(cli_app, ["scale", url, "squares", "2", "--token-file", str(token)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("squares: 2 replicas (")
    assert "slots: #0 ready, #1 " in result.output
    result = runner.invoke(cli_app, ["scale", url, "squares", "1", "--token-file", str(token)])
    assert result.exit_code == 0 and result.output.startswith("squares: 1 replicas (")
    assert Client(url).run(n=7).to_dict() == af.run(SCALED, n=7).to_dict()


def test_altoflow_scale_errors_exit_non_zero_with_the_reason(url: str, tmp_path: Path) -> None:
    token = tmp_path / "admin.token"
    token.write_text(TOKEN)
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-it")
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    result = runner.invoke(cli_app, ["scale", url, "nope", "2", "--token-file", str(token)])
    assert result.exit_code == 1 and "404: no stage named 'nope'; stages: items" in result.output
    result = runner.invoke(cli_app, ["scale", url, "work", "2", "--token-file", str(wrong)])
    assert result.exit_code == 1 and "401: missing or wrong admin token" in result.output
    result = runner.invoke(cli_app, ["scale", url, "work", "0", "--token-file", str(token)])
    assert result.exit_code == 2 and "whole number >= 1" in result.output
    result = runner.invoke(cli_app, ["scale", url, "work", "2", "--token-file", str(empty)])
    assert result.exit_code == 2 and "is empty" in result.output
    result = runner.invoke(cli_app, ["scale", "http://127.0.0.1:9", "work", "2",
                                     "--token-file", str(token)])
    assert result.exit_code == 1 and "cannot reach the server at http://127.0.0.1:9" in result.output


def test_an_ingress_without_stages_or_rescale_answers_404_and_409() -> None:
    import asyncio

    class Older:  # an Ingress written before rescaling existed
        compiled = LocalIngress(SCALED).compiled

    async def main():
        app = create_app(Older(), admin_token=TOKEN)  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            stages = await client.get("/v1/stages")
            put = await client.put("/v1/stages/work/replicas", json={"replicas": 2},
                                   headers={"Authorization": f"Bearer {TOKEN}"})
        return stages, put

    stages, put = asyncio.run(main())
    assert stages.status_code == 404 and "does not report" in stages.json()["detail"]
    assert put.status_code == 409 and "cannot rescale" in put.json()["detail"]
