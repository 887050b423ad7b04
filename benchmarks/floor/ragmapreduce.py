"""Retrieval-augmented map-reduce by hand: asyncio tasks and the app's own functions, no framework.

The floor of the end-to-end benchmark: BM25 on the event loop, every passage's summary at once
(each sent out as soon as it is written), then the answer from the summaries in retrieval
order. ``await run(question=...)`` returns what ``altoflow.run`` returns for the app, as
``Result.to_dict()`` shows it; ``stream`` yields the events as the server streams them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

APP_PATH = Path(__file__).resolve().parents[2] / "examples" / "ragmapreduce" / "app.py"


def _load(path: Path, name: str) -> Any:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


app = _load(APP_PATH, "ragmapreduce_app")


async def summarise(i: int, passage: dict, question: str) -> tuple[int, dict]:
    return i, await app.summary(passages=passage, question=question)


async def stream(question: str, k: int = 4, *, barrier: bool = False) -> AsyncIterator[dict]:
    """The events of one request (``barrier`` changes nothing: no stage of it streams lines)."""
    passages = list(app.passages(question=question, k=k))
    tasks = [asyncio.create_task(summarise(i, p, question)) for i, p in enumerate(passages)]
    summaries: list[Any] = [None] * len(tasks)
    try:
        for next_done in asyncio.as_completed(tasks):
            i, summary = await next_done
            summaries[i] = summary
            yield {"type": "output", "stage": "summary", "index": [i], "value": summary}
    finally:
        for task in tasks:
            task.cancel()
    answer = await app.answer(summaries=summaries, question=question)
    yield {"type": "output", "stage": "answer", "index": [], "value": answer}


async def run(question: str, k: int = 4) -> dict:
    """One request; the app's outputs by stage name, as ``Result.to_dict()`` gives them."""
    outputs: dict[str, Any] = {"summary": []}
    async for event in stream(question=question, k=k):
        if event["stage"] == "summary":
            outputs["summary"].append((event["index"], event["value"]))
        else:
            outputs[event["stage"]] = event["value"]
    outputs["summary"] = [value for _, value in sorted(outputs["summary"], key=lambda r: r[0])]
    return outputs
