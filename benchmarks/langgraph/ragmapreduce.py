"""The retrieval-augmented map-reduce application, written the LangGraph way.

The same steps as ``examples/ragmapreduce/app.py``, calling that module's own functions (the
same BM25 index, the same prompts, the same LM through ``lm_from_env``), orchestrated by
LangGraph: a ``retrieve`` node, one ``summarise`` task per passage sent with ``Send`` (they run
concurrently), an ``operator.add`` reducer that gathers the summaries, and an ``answer`` node
that runs once they are all in. ``await run(question=..., k=...)`` returns what
``altoflow.run`` returns for the app, as ``Result.to_dict()`` shows it.
"""

import importlib.util
import operator
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

APP_PATH = Path(__file__).resolve().parents[2] / "examples" / "ragmapreduce" / "app.py"


def _load(path: Path, name: str) -> Any:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


app = _load(APP_PATH, "ragmapreduce_app")


class State(TypedDict, total=False):
    question: str
    k: int
    passages: list[dict]
    summaries: Annotated[list[dict], operator.add]  # one per passage, in completion order
    answer: dict


class PassageTask(TypedDict):
    question: str
    rank: int
    passage: dict


def retrieve(state: State) -> dict:  # CPU-bound: LangGraph runs it on its thread pool
    return {"passages": list(app.passages(question=state["question"], k=state["k"]))}


def summarise_each(state: State) -> list[Send] | str:
    if not state["passages"]:
        return "answer"
    return [
        Send("summarise", PassageTask(question=state["question"], rank=rank, passage=passage))
        for rank, passage in enumerate(state["passages"])
    ]


async def summarise(task: PassageTask) -> dict:
    summary = await app.summary(passages=task["passage"], question=task["question"])
    return {"summaries": [{"rank": task["rank"], **summary}]}


def in_rank_order(summaries: list[dict]) -> list[dict]:
    return [
        {key: value for key, value in s.items() if key != "rank"}
        for s in sorted(summaries, key=operator.itemgetter("rank"))
    ]


async def answer(state: State) -> dict:
    summaries = in_rank_order(state.get("summaries", []))
    return {"answer": await app.answer(summaries=summaries, question=state["question"])}


def build() -> Any:
    graph = StateGraph(State)
    graph.add_node("retrieve", retrieve)
    graph.add_node("summarise", summarise)
    graph.add_node("answer", answer)
    graph.add_edge(START, "retrieve")
    graph.add_conditional_edges("retrieve", summarise_each, ["summarise", "answer"])
    graph.add_edge("summarise", "answer")
    graph.add_edge("answer", END)
    return graph.compile()


GRAPH = build()


async def run(question: str, k: int = 4) -> dict:
    """One request; the app's outputs by stage name, as ``Result.to_dict()`` gives them."""
    state = await GRAPH.ainvoke({"question": question, "k": k, "summaries": []})
    return {"summary": in_rank_order(state.get("summaries", [])), "answer": state["answer"]}
