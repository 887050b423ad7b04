"""The claim verifier, written the LangGraph way.

The same steps as ``examples/claimverify/app.py``, calling that module's own functions (the same
prompts, the same LM through ``lm_from_env``, the same BM25 index and reranker), orchestrated by
LangGraph:

- the main graph: an ``answer`` node, a ``claims`` node, then one ``verify`` task per claim sent
  with ``Send`` (they run concurrently), whose records an ``operator.add`` reducer gathers;
- ``verify`` is a subgraph per claim: a ``queries`` node, one ``search`` task per query sent
  with ``Send`` (BM25 over the query's tokens, then the reranker; a sync node, so LangGraph runs
  it on its thread pool), a reducer gathering the candidates, and ``judge``, which keeps the
  best evidence, asks for the verdict and writes the claim's record.

A node's result moves on only when the node returns, so the claims reach ``verify`` after the
LM has written all of them, and a claim's verdict waits for all of its queries: that is the
difference with altoflow's streaming that the benchmark measures. ``await run(question=...)``
returns what ``altoflow.run`` returns for the app, as ``Result.to_dict()`` shows it.
"""

import functools
import importlib.util
import operator
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

APP_PATH = Path(__file__).resolve().parents[2] / "examples" / "claimverify" / "app.py"


def _load(path: Path, name: str) -> Any:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


app = _load(APP_PATH, "claimverify_app")


@functools.cache
def _candidates() -> Any:
    """The app's ``candidates`` stage, made once per process (it may load ColBERT)."""
    return app.candidates()


# -- one claim ----------------------------------------------------------------------------------


class ClaimState(TypedDict, total=False):
    index: int
    claim: str
    queries: list[str]
    # (query number, rank, passage) of every query's candidates, in completion order.
    found: Annotated[list[tuple[int, int, dict]], operator.add]
    report: Annotated[list[tuple[int, dict]], operator.add]


class ClaimOutput(TypedDict):
    report: Annotated[list[tuple[int, dict]], operator.add]


class QueryTask(TypedDict):
    number: int
    query: str


async def queries(state: ClaimState) -> dict:
    return {"queries": [q async for q in app.queries(claims=state["claim"])]}


def search_each(state: ClaimState) -> list[Send] | str:
    if not state["queries"]:
        return "judge"
    return [Send("search", QueryTask(number=n, query=q)) for n, q in enumerate(state["queries"])]


def search(task: QueryTask) -> dict:
    query = task["query"]
    scores = sum((app.bm25(query_tokens=t) for t in app.query_tokens(queries=query)), start=0)
    found = _candidates()(queries=query, bm25=scores)
    return {"found": [(task["number"], rank, p) for rank, p in enumerate(found)]}


def best_evidence(found: list[tuple[int, int, dict]]) -> list[dict]:
    """``ops.topk(EVIDENCE, key=score)``: highest score first, ties to the earlier query and rank."""
    ranked = sorted(found, key=lambda f: (-app.score(f[2]), f[0], f[1]))
    return [passage for _, _, passage in ranked[: app.EVIDENCE]]


async def judge(state: ClaimState) -> dict:
    evidence = best_evidence(state.get("found", []))
    verdict = await app.verdict(claims=state["claim"], evidence=evidence)
    record = app.report(claims=state["claim"], evidence=evidence, verdict=verdict)
    return {"report": [(state["index"], record)]}


def build_claim_graph() -> Any:
    graph = StateGraph(ClaimState, output_schema=ClaimOutput)
    graph.add_node("queries", queries)
    graph.add_node("search", search)
    graph.add_node("judge", judge)
    graph.add_edge(START, "queries")
    graph.add_conditional_edges("queries", search_each, ["search", "judge"])
    graph.add_edge("search", "judge")
    graph.add_edge("judge", END)
    return graph.compile()


# -- one request --------------------------------------------------------------------------------


class State(TypedDict, total=False):
    question: str
    answer: str
    claims: list[str]
    report: Annotated[list[tuple[int, dict]], operator.add]  # (claim number, record)


async def answer(state: State) -> dict:
    return {"answer": await app.answer(question=state["question"])}


async def claims(state: State) -> dict:
    return {"claims": [c async for c in app.claims(answer=state["answer"])]}


def verify_each(state: State) -> list[Send] | str:
    if not state["claims"]:
        return END
    return [Send("verify", ClaimState(index=i, claim=c)) for i, c in enumerate(state["claims"])]


def build() -> Any:
    graph = StateGraph(State)
    graph.add_node("answer", answer)
    graph.add_node("claims", claims)
    graph.add_node("verify", build_claim_graph())
    graph.add_edge(START, "answer")
    graph.add_edge("answer", "claims")
    graph.add_conditional_edges("claims", verify_each, ["verify", END])
    graph.add_edge("verify", END)
    return graph.compile()


GRAPH = build()


async def run(question: str) -> dict:
    """One request; the app's outputs by stage name, as ``Result.to_dict()`` gives them."""
    state = await GRAPH.ainvoke({"question": question, "report": []})
    return {"answer": state["answer"], "report": [r for _, r in sorted(state["report"], key=operator.itemgetter(0))]}
