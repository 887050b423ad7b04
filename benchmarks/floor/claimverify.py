"""The claim verifier by hand: asyncio tasks and the app's own functions, no framework.

The floor of the end-to-end benchmark: what a careful programmer writes without altoflow, with
the same streaming that altoflow does. Each claim's verification starts the moment its line is
written; each query is searched the moment its line is written (BM25 on the event loop: a few
milliseconds, less than a thread hop costs); the verdict waits for that claim's queries only,
and each claim's record goes out as soon as it is judged. ``await run(question=...)`` returns
what ``altoflow.run`` returns for the app, as ``Result.to_dict()`` shows it; ``stream`` yields
the events as the server streams them (``{"type": "output", "stage", "index", "value"}``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

APP_PATH = Path(__file__).resolve().parents[2] / "examples" / "claimverify" / "app.py"


def _load(path: Path, name: str) -> Any:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


app = _load(APP_PATH, "claimverify_app")
_CANDIDATES: list[Any] = []


def candidates() -> Any:
    """The app's ``candidates`` stage, made once per process (it may load ColBERT)."""
    if not _CANDIDATES:
        _CANDIDATES.append(app.candidates())
    return _CANDIDATES[0]


def search(query: str) -> list[dict]:
    scores = sum((app.bm25(query_tokens=t) for t in app.query_tokens(queries=query)), start=0)
    return list(candidates()(queries=query, bm25=scores))


def best_evidence(found: list[tuple[int, int, dict]]) -> list[dict]:
    """``ops.topk(EVIDENCE, key=score)``: highest score first, ties to the earlier query and rank."""
    ranked = sorted(found, key=lambda f: (-app.score(f[2]), f[0], f[1]))
    return [passage for _, _, passage in ranked[: app.EVIDENCE]]


async def lines(items: AsyncIterator[str], barrier: bool) -> AsyncIterator[str]:
    """The items as they are written or, with ``barrier``, all of them once the last is."""
    if barrier:
        items = iter([item async for item in items])
        for item in items:
            yield item
    else:
        async for item in items:
            yield item


async def verify(claim: str, barrier: bool = False) -> dict:
    found: list[tuple[int, int, dict]] = []
    number = 0
    async for query in lines(app.queries(claims=claim), barrier):
        found += [(number, rank, p) for rank, p in enumerate(search(query))]
        number += 1
    evidence = best_evidence(found)
    verdict = await app.verdict(claims=claim, evidence=evidence)
    return app.report(claims=claim, evidence=evidence, verdict=verdict)


async def stream(question: str, *, barrier: bool = False) -> AsyncIterator[dict]:
    """The events of one request; ``barrier``: each LM stage's lines go on when the last is written."""
    answer = await app.answer(question=question)
    yield {"type": "output", "stage": "answer", "index": [], "value": answer}
    done: asyncio.Queue[tuple[int, asyncio.Task]] = asyncio.Queue()
    tasks: list[asyncio.Task] = []
    try:
        async for claim in lines(app.claims(answer=answer), barrier):
            task = asyncio.create_task(verify(claim, barrier))
            task.add_done_callback(lambda t, i=len(tasks): done.put_nowait((i, t)))
            tasks.append(task)
        for _ in tasks:
            index, task = await done.get()
            yield {"type": "output", "stage": "report", "index": [index], "value": task.result()}
    finally:
        for task in tasks:
            task.cancel()


async def run(question: str) -> dict:
    """One request; the app's outputs by stage name, as ``Result.to_dict()`` gives them."""
    outputs: dict[str, Any] = {"report": []}
    async for event in stream(question=question):
        if event["stage"] == "report":
            outputs["report"].append((event["index"], event["value"]))
        else:
            outputs[event["stage"]] = event["value"]
    outputs["report"] = [value for _, value in sorted(outputs["report"], key=lambda r: r[0])]
    return outputs
