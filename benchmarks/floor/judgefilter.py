"""Generate, judge and filter by hand: asyncio tasks and the app's own functions, no framework.

The floor of the end-to-end benchmark: each candidate is judged the moment its line is written
(each judgement sent out as soon as it is in); when the last is judged, the candidates that
passed, in written order, and the best of them. ``await run(question=...)`` returns what
``altoflow.run`` returns for the app, as ``Result.to_dict()`` shows it; ``stream`` yields the
events as the server streams them (``barrier=True``: as ``altoflow serve --barrier`` would).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

APP_PATH = Path(__file__).resolve().parents[2] / "examples" / "judgefilter" / "app.py"


def _load(path: Path, name: str) -> Any:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


app = _load(APP_PATH, "judgefilter_app")


async def stream(
    question: str, n: int = 8, min_score: int = 6, *, barrier: bool = False
) -> AsyncIterator[dict]:
    """The events of one request; ``barrier``: the candidates go on when the last is written."""
    written = app.candidates(question=question, n=n)
    if barrier:
        written = _replay([c async for c in written])
    done: asyncio.Queue[tuple[int, asyncio.Task]] = asyncio.Queue()
    tasks: list[asyncio.Task] = []
    judgements: list[Any] = []
    try:
        async for candidate in written:
            task = asyncio.create_task(
                app.judgement(candidates=candidate, question=question, min_score=min_score)
            )
            task.add_done_callback(lambda t, i=len(tasks): done.put_nowait((i, t)))
            tasks.append(task)
        judgements = [None] * len(tasks)
        for _ in tasks:
            index, task = await done.get()
            judgements[index] = task.result()
            yield {"type": "output", "stage": "judgement", "index": [index], "value": judgements[index]}
    finally:
        for task in tasks:
            task.cancel()
    kept = [app.kept(judgement=j) for j in judgements if app.passed(j)]
    for index, value in enumerate(kept):
        yield {"type": "output", "stage": "kept", "index": [index], "value": value}
    # sorted() is stable: equal grades keep the order they were written in.
    best = sorted(kept, key=app.score, reverse=True)[: app.BEST]
    yield {"type": "output", "stage": "best", "index": [], "value": best}


async def _replay(items: list[str]) -> AsyncIterator[str]:
    for item in items:
        yield item


async def run(question: str, n: int = 8, min_score: int = 6) -> dict:
    """One request; the app's outputs by stage name, as ``Result.to_dict()`` gives them."""
    outputs: dict[str, Any] = {"judgement": [], "kept": []}
    async for event in stream(question=question, n=n, min_score=min_score):
        if event["index"]:
            outputs[event["stage"]].append((event["index"], event["value"]))
        else:
            outputs[event["stage"]] = event["value"]
    for stage in ("judgement", "kept"):
        outputs[stage] = [value for _, value in sorted(outputs[stage], key=lambda r: r[0])]
    return outputs
