"""Self-consistency voting: sample many reasoning paths, extract each one's answer, vote.

One request asks a question (optionally with the options to choose from). ``seeds`` fans out
one item per path (level ``path``); ``reasoning`` samples each path as its own LM call, with
its own seed at a non-zero temperature, all of them at once; ``answer`` extracts the path's
final answer; ``votes`` counts the paths per answer (``ops.sum`` of one-vote ``Counter``s over
the paths: a count per answer, in one group per request) while ``ballots`` counts the paths
(``ops.count``); ``winner`` returns the majority answer with its support.

A path whose answer cannot be read abstains: it is a ballot but not a vote, so
``sum(votes) + unanswered == paths``. Ties go to the option listed first (to the
alphabetically first answer when there are no options), so the winner never depends on the
order in which paths finish.

The LM comes from the ``ALTOFLOW_LM*`` variables (the simulated engine unless they say
otherwise; see ``altoflow.lm.settings``). The simulated engine writes prose that borrows words
from the prompt, options included, so its paths disagree and the vote is a real one.

    altoflow compile examples/selfconsistency/app.py
    altoflow run examples/selfconsistency/app.py --input "$(cat examples/selfconsistency/input.json)"
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Annotated

from pydantic import Field

from altoflow import ops, stage
from altoflow.lm import LM, loop_lm

REASONING_PROMPT = """\
Think about the question below step by step, then give your final answer on a last line of \
the form "Answer: <your answer>".{options}

Question: {question}
"""

OPTIONS_LINE = "\nPick exactly one of these options: {options}."

# Sampling of one path: diverse enough to disagree, and reproducible through its seed.
TEMPERATURE = 0.8

_MARKER = re.compile(r"\banswer\s*(?:is)?\s*:\s*(.*)", re.IGNORECASE)


def extract_answer(reasoning: str, options: tuple[str, ...]) -> str | None:
    """The final answer of one path, or ``None`` when it gives none.

    With options: the option named last in the path's ``Answer:`` line, else the option named
    last anywhere in the path, spelled as in ``options``. Without options: the text of the last
    ``Answer:`` line, lower-cased, without trailing punctuation.
    """
    marked = None
    for match in _MARKER.finditer(reasoning):
        marked = match.group(1).splitlines()[0] if match.group(1) else ""
    if not options:
        if marked is None:
            return None
        answer = " ".join(marked.split()).strip(" .!*").casefold()
        return answer or None
    for text in ([marked] if marked else []) + [reasoning]:
        last = None
        for option in options:
            pattern = r"(?<!\w)" + re.escape(option) + r"(?!\w)"
            for match in re.finditer(pattern, text, re.IGNORECASE):
                if last is None or match.start() > last[0]:
                    last = (match.start(), option)
        if last is not None:
            return last[1]
    return None


def tally(votes: dict[str, int], ballots: int, options: tuple[str, ...]) -> dict:
    """The majority answer, its support (votes over paths), and every answer's votes, best first."""
    place = {option: i for i, option in enumerate(options)}
    ranked = sorted(votes.items(), key=lambda kv: (-kv[1], place.get(kv[0], len(place)), kv[0]))
    best = ranked[0][0] if ranked else None
    counted = sum(votes.values())
    return {
        "answer": best,
        "support": round(votes[best] / ballots, 3) if best is not None else 0.0,
        "votes": dict(ranked),
        "unanswered": ballots - counted,
        "paths": ballots,
    }



def lm(pool: str) -> LM:
    """The engine of this event loop for the LM stage ``pool``, from the ``ALTOFLOW_LM*`` variables.

    One per process, event loop and pool (``altoflow.lm.loop_lm``): an HTTP client belongs to
    the loop that made it, and ``altoflow.run`` starts a new loop for each request.
    """
    return loop_lm(pool)


#: LM calls in flight at once per replica of ``reasoning``. Each request makes ``samples`` of
#: them at once (8 by default), each a few seconds long; at the default of 64 for an async stage
#: the stage would hold at most 8 requests' paths at a time and queue the rest, while the
#: engines batch far more. The engines' own batch limit is what should bound them.
PATHS_IN_FLIGHT = 1024


@stage(fanout="path")
def seeds(samples: Annotated[int, Field(ge=1, le=256)] = 8):
    """One item per reasoning path: its sampling seed."""
    yield from range(samples)


@stage(output=True, concurrency=PATHS_IN_FLIGHT)
async def reasoning(seeds: int, question: str, options: tuple[str, ...] = ()) -> dict:
    """One sampled reasoning path (every path is its own LM call, all of them at once)."""
    engine = lm("reasoning")
    listed = OPTIONS_LINE.format(options=", ".join(options)) if options else ""
    text = await engine.complete(
        REASONING_PROMPT.format(question=question, options=listed),
        seed=seeds, temperature=TEMPERATURE, max_tokens=320,
    )
    return {"path": seeds, "text": text.strip(), "lm": engine.name}


@stage
def answer(reasoning: dict, options: tuple[str, ...] = ()) -> str | None:
    """The answer this path arrives at, or None when it gives none."""
    return extract_answer(reasoning["text"], options)


@stage(aggregate=ops.sum, over="path")
def votes(answer: str | None) -> Counter:
    """A count per answer: each path adds one vote for its answer (an abstention adds none)."""
    return Counter() if answer is None else Counter({answer: 1})


@stage(aggregate=ops.count, over="path")
def ballots(answer: str | None) -> str | None:
    """How many paths voted, abstentions included."""
    return answer


@stage(output=True)
def winner(votes: dict[str, int], ballots: int, options: tuple[str, ...] = ()) -> dict:
    """The majority answer and its support."""
    return tally(votes, ballots, options)
