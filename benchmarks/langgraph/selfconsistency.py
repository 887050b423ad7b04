"""The self-consistency voting application, written the LangGraph way.

The same steps as ``examples/selfconsistency/app.py``, calling that module's own functions (the
same prompt, seeds and temperature, the same answer extraction and tally, the same LM through
``lm_from_env``), orchestrated by LangGraph: one ``sample`` task per path sent with ``Send``
straight from ``START`` (they run concurrently), an ``operator.add`` reducer that gathers the
paths, and a ``vote`` node that counts them once they are all in. ``await run(question=...,
options=..., samples=...)`` returns what ``altoflow.run`` returns for the app, as
``Result.to_dict()`` shows it.
"""

import importlib.util
import operator
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

APP_PATH = Path(__file__).resolve().parents[2] / "examples" / "selfconsistency" / "app.py"


def _load(path: Path, name: str) -> Any:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


app = _load(APP_PATH, "selfconsistency_app")


class State(TypedDict, total=False):
    question: str
    options: tuple[str, ...]
    samples: int
    paths: Annotated[list[dict], operator.add]  # one per path, in completion order
    winner: dict


class PathTask(TypedDict):
    question: str
    options: tuple[str, ...]
    seed: int


def sample_each(state: State) -> list[Send]:
    return [
        Send("sample", PathTask(question=state["question"], options=state["options"], seed=seed))
        for seed in app.seeds(samples=state["samples"])
    ]


async def sample(task: PathTask) -> dict:
    reasoning = await app.reasoning(
        seeds=task["seed"], question=task["question"], options=task["options"]
    )
    answer = app.answer(reasoning=reasoning, options=task["options"])
    return {"paths": [{"reasoning": reasoning, "answer": answer}]}


async def vote(state: State) -> dict:
    answers = [path["answer"] for path in state["paths"]]
    votes = sum((app.votes(answer=a) for a in answers), Counter())
    return {"winner": app.winner(votes=votes, ballots=len(answers), options=state["options"])}


def build() -> Any:
    graph = StateGraph(State)
    graph.add_node("sample", sample)
    graph.add_node("vote", vote)
    graph.add_conditional_edges(START, sample_each, ["sample"])
    graph.add_edge("sample", "vote")
    graph.add_edge("vote", END)
    return graph.compile()


GRAPH = build()


async def run(question: str, options: Sequence[str] = (), samples: int = 8) -> dict:
    """One request; the app's outputs by stage name, as ``Result.to_dict()`` gives them."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    state = await GRAPH.ainvoke(
        {"question": question, "options": tuple(options), "samples": samples, "paths": []}
    )
    paths = sorted(state["paths"], key=lambda p: p["reasoning"]["path"])
    return {"reasoning": [p["reasoning"] for p in paths], "winner": state["winner"]}
