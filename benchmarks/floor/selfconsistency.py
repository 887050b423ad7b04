"""Self-consistency by hand: asyncio tasks and the app's own functions, no framework.

The floor of the end-to-end benchmark: every reasoning path at once (each sent out as soon as
it is written), its answer extracted as it arrives, and the vote when the last path is in.
``await run(question=...)`` returns what ``altoflow.run`` returns for the app, as
``Result.to_dict()`` shows it; ``stream`` yields the events as the server streams them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

APP_PATH = Path(__file__).resolve().parents[2] / "examples" / "selfconsistency" / "app.py"


def _load(path: Path, name: str) -> Any:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


app = _load(APP_PATH, "selfconsistency_app")


async def stream(
    question: str, options: Sequence[str] = (), samples: int = 8, *, barrier: bool = False
) -> AsyncIterator[dict]:
    """The events of one request (``barrier`` changes nothing: no stage of it streams lines)."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    options = tuple(options)
    tasks = [
        asyncio.create_task(app.reasoning(seeds=seed, question=question, options=options))
        for seed in app.seeds(samples=samples)
    ]
    votes: Counter = Counter()
    ballots = 0
    try:
        for next_done in asyncio.as_completed(tasks):
            reasoning = await next_done
            yield {"type": "output", "stage": "reasoning", "index": [reasoning["path"]], "value": reasoning}
            votes += app.votes(answer=app.answer(reasoning=reasoning, options=options))
            ballots += 1
    finally:
        for task in tasks:
            task.cancel()
    winner = app.winner(votes=votes, ballots=ballots, options=options)
    yield {"type": "output", "stage": "winner", "index": [], "value": winner}


async def run(question: str, options: Sequence[str] = (), samples: int = 8) -> dict:
    """One request; the app's outputs by stage name, as ``Result.to_dict()`` gives them."""
    outputs: dict[str, Any] = {"reasoning": []}
    async for event in stream(question=question, options=options, samples=samples):
        if event["stage"] == "reasoning":
            outputs["reasoning"].append((event["index"], event["value"]))
        else:
            outputs[event["stage"]] = event["value"]
    outputs["reasoning"] = [value for _, value in sorted(outputs["reasoning"], key=lambda r: r[0])]
    return outputs
