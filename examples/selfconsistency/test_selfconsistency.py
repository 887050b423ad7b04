"""The self-consistency app: N paths, votes that add up to N, a winner with the most support,
ties broken the same way every time, and the same result served as in-process."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

import altoflow as af
from altoflow.client import Client
from altoflow.server.served import ServedIngress
from altoflow.server import create_app, serve_in_thread

HERE = Path(__file__).resolve().parent
TARGET = str(HERE / "app.py")
EXAMPLE = json.loads((HERE / "input.json").read_text())
OPTIONS = ("Pacific", "Atlantic", "Indian", "Arctic")


def _load_app():
    spec = importlib.util.spec_from_file_location("selfconsistency_app_under_test", TARGET)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


app = _load_app()


@pytest.fixture(autouse=True)
def fast_simulated_lm(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ALTOFLOW_LM", "ALTOFLOW_LM_URL", "ALTOFLOW_LM_MODEL", "ALTOFLOW_LM_SEED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALTOFLOW_LM_SPEED", "100")


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [
        ("The Atlantic is big, but the Pacific is bigger.\nAnswer: Pacific", OPTIONS, "Pacific"),
        ("Answer: the pacific, not the Arctic", OPTIONS, "Arctic"),  # named last on the line
        ("Not the arctic; I would say the indian ocean.", OPTIONS, "Indian"),  # no Answer line
        ("Answer: none of them\nThe Atlantic, surely.", OPTIONS, "Atlantic"),
        ("Nothing to pick from here.", OPTIONS, None),
        ("Pacifics are not an option.", OPTIONS, None),  # whole words only
        ("6 times 7 is 42.\nAnswer: 42.", (), "42"),
        ("So the answer is: Blue Whale!", (), "blue whale"),
        ("No marker at all", (), None),
    ],
)
def test_extract_answer(text, options, expected) -> None:
    assert app.extract_answer(text, options) == expected


def test_ties_go_to_the_option_listed_first_whatever_the_order_of_the_votes() -> None:
    for votes in ({"Indian": 2, "Atlantic": 2, "Arctic": 1}, {"Atlantic": 2, "Arctic": 1, "Indian": 2}):
        assert app.tally(votes, ballots=6, options=OPTIONS) == {
            "answer": "Atlantic", "support": 0.333,
            "votes": {"Atlantic": 2, "Indian": 2, "Arctic": 1}, "unanswered": 1, "paths": 6,
        }
    assert app.tally({"b": 1, "a": 1}, ballots=2, options=())["answer"] == "a"
    assert app.tally({}, ballots=3, options=OPTIONS) == {
        "answer": None, "support": 0.0, "votes": {}, "unanswered": 3, "paths": 3}


def _check(result: af.Result, fields: dict) -> None:
    n = fields.get("samples", 8)
    options = tuple(fields.get("options", ()))
    paths = result["reasoning"]
    assert [p["path"] for p in paths] == list(range(n))
    assert all(p["lm"] == "altoflow-simulated" for p in paths)
    assert len({p["text"] for p in paths}) == n  # every path is its own sample
    winner = result["winner"]
    assert sum(winner["votes"].values()) + winner["unanswered"] == winner["paths"] == n
    # The plain-Python oracle: extract each path's answer and count.
    answers = [app.extract_answer(p["text"], options) for p in paths]
    assert winner["votes"] == dict(Counter(a for a in answers if a is not None))
    assert winner["unanswered"] == answers.count(None)
    if winner["answer"] is not None:
        assert winner["votes"][winner["answer"]] == max(winner["votes"].values())
        assert winner["support"] == round(winner["votes"][winner["answer"]] / n, 3)
    assert list(winner["votes"].values()) == sorted(winner["votes"].values(), reverse=True)


def test_votes_add_up_to_the_paths_and_the_winner_has_the_most() -> None:
    result = af.run(TARGET, **EXAMPLE)
    _check(result, EXAMPLE)
    assert result["winner"]["answer"] in OPTIONS


def test_a_question_without_options_votes_on_what_the_paths_write() -> None:
    fields = {"question": "What is six times seven?", "samples": 3}
    _check(af.run(TARGET, **fields), fields)


def test_samples_must_be_at_least_one() -> None:
    with pytest.raises(af.InputError, match="samples"):
        af.run(TARGET, question="q", samples=0)


@pytest.mark.timeout(240)
def test_served_result_equals_altoflow_run() -> None:
    requests = [EXAMPLE, {"question": "Which planet is the largest?",
                          "options": ["Jupiter", "Saturn", "Neptune"], "samples": 5},
                {"question": "What is six times seven?", "samples": 2}]
    with serve_in_thread(create_app(ServedIngress(TARGET))) as url, Client(url, timeout=120) as client:
        for fields in requests:
            got, want = client.run(**fields), af.run(TARGET, **fields)
            _check(got, fields)
            assert got.to_dict() == json.loads(json.dumps(want.to_dict())), fields
