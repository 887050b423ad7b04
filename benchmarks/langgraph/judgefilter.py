"""The generate-judge-filter application, written the LangGraph way.

The same steps as ``examples/judgefilter/app.py``, calling that module's own functions (the same
prompts, line cleaning, grading and ranking, the same LM through ``lm_from_env``), orchestrated
by LangGraph: a ``generate`` node that collects the candidates, one ``judge`` task per candidate
sent with ``Send`` (they run concurrently), an ``operator.add`` reducer that gathers the
judgements, and a ``select`` node that filters and ranks them once they are all in.

A node's result moves on only when the node returns, so the candidates reach ``judge`` after
the LM has written all of them, where altoflow judges each one as soon as its line is written:
that is the difference the benchmark measures. ``await run(question=..., n=..., min_score=...)``
returns what ``altoflow.run`` returns for the app, as ``Result.to_dict()`` shows it.
"""

import importlib.util
import operator
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

APP_PATH = Path(__file__).resolve().parents[2] / "examples" / "judgefilter" / "app.py"


def _load(path: Path, name: str) -> Any:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


app = _load(APP_PATH, "judgefilter_app")


class State(TypedDict, total=False):
    question: str
    n: int
    min_score: int
    candidates: list[str]
    judgements: Annotated[list[dict], operator.add]  # one per candidate, in completion order
    kept: list[dict]
    best: list[dict]


class JudgeTask(TypedDict):
    question: str
    min_score: int
    index: int
    candidate: str


async def generate(state: State) -> dict:
    return {"candidates": [c async for c in app.candidates(question=state["question"], n=state["n"])]}


def judge_each(state: State) -> list[Send] | str:
    if not state["candidates"]:
        return "select"
    return [
        Send("judge", JudgeTask(question=state["question"], min_score=state["min_score"],
                                index=index, candidate=candidate))
        for index, candidate in enumerate(state["candidates"])
    ]


async def judge(task: JudgeTask) -> dict:
    judgement = await app.judgement(
        candidates=task["candidate"], question=task["question"], min_score=task["min_score"]
    )
    return {"judgements": [{"index": task["index"], "judgement": judgement}]}


def in_written_order(judgements: list[dict]) -> list[dict]:
    return [j["judgement"] for j in sorted(judgements, key=operator.itemgetter("index"))]


async def select(state: State) -> dict:
    graded = [app.kept(judgement=j) for j in in_written_order(state.get("judgements", []))]
    kept = [g for g in graded if app.passed(g)]
    # sorted() is stable: equal grades keep the order they were written in.
    best = sorted(kept, key=app.score, reverse=True)[: app.BEST]
    return {"kept": kept, "best": best}


def build() -> Any:
    graph = StateGraph(State)
    graph.add_node("generate", generate)
    graph.add_node("judge", judge)
    graph.add_node("select", select)
    graph.add_edge(START, "generate")
    graph.add_conditional_edges("generate", judge_each, ["judge", "select"])
    graph.add_edge("judge", "select")
    graph.add_edge("select", END)
    return graph.compile()


GRAPH = build()


async def run(question: str, n: int = 8, min_score: int = 6) -> dict:
    """One request; the app's outputs by stage name, as ``Result.to_dict()`` gives them."""
    state = await GRAPH.ainvoke(
        {"question": question, "n": n, "min_score": min_score, "judgements": []}
    )
    return {
        "judgement": in_written_order(state.get("judgements", [])),
        "kept": state["kept"],
        "best": state["best"],
    }
