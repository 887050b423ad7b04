"""Generate, judge, filter: candidate answers from one LM, a verdict on each from another call.

``candidates`` asks the LM for several one-sentence answers to a question and fans out each line
the moment it is written (level ``candidate``), so judging starts while the LM is still writing;
``judgement`` asks the LM to list the problems of one candidate and grades it (10 points, 2 off
per problem) and passes it when the grade reaches ``min_score``; ``kept`` keeps the candidates
that passed (``ops.filter``, in the order they were written) and fans them out again (level
``kept``); ``best`` ranks them by grade (``ops.topk``), best first, ties to the earlier one.

The LM comes from the ``ALTOFLOW_LM*`` variables (the simulated engine unless they say
otherwise; see ``altoflow.lm.settings``). The simulated engine lists a few problems for every
candidate, so its grades spread and the filter has something to do.

    altoflow compile examples/judgefilter/app.py
    altoflow run examples/judgefilter/app.py --input "$(cat examples/judgefilter/input.json)"
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

from altoflow import ops, stage
from altoflow.lm import LM, loop_lm

GENERATE_PROMPT = """\
Write {n} different answers to the question below, each one sentence that makes a single \
self-contained claim. One answer per line, with no numbering and nothing else.

Question: {question}
"""

JUDGE_PROMPT = """\
You are a strict reviewer. Below are a question and one candidate answer to it.
List every problem with the candidate, one per line: a false or unsupported claim, a mistake, \
or a way in which it does not answer the question. Write nothing else. If the candidate has \
no problem, write only: NONE

Question: {question}
Candidate: {candidate}
"""

# How many of the candidates that passed ``best`` ranks.
BEST = 3
# The grade: full marks, less this much per problem the judge lists, never below zero.
FULL_MARKS = 10
PER_PROBLEM = 2

_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")


def clean_line(line: str) -> str:
    """A line of a list without its bullet or number: ``"2. Water boils."`` -> ``"Water boils."``."""
    return _BULLET.sub("", line).strip()


def problems_in(review: str) -> list[str]:
    """The problems a review lists, one per line; ``NONE`` (or nothing) is no problem."""
    lines = [clean_line(line) for line in review.splitlines()]
    return [line for line in lines if line and line.strip(" .!").casefold() != "none"]


def grade(problems: list[str]) -> int:
    return max(0, FULL_MARKS - PER_PROBLEM * len(problems))


def passed(judgement: dict) -> bool:
    return judgement["passed"]


def score(judgement: dict) -> int:
    return judgement["score"]



def lm(pool: str) -> LM:
    """The engine of this event loop for the LM stage ``pool``, from the ``ALTOFLOW_LM*`` variables.

    One per process, event loop and pool (``altoflow.lm.loop_lm``): an HTTP client belongs to
    the loop that made it, and ``altoflow.run`` starts a new loop for each request.
    """
    return loop_lm(pool)

@stage(fanout="candidate")
async def candidates(question: str, n: Annotated[int, Field(ge=1, le=64)] = 8):
    """Candidate answers, each passed on as soon as its line is written."""
    prompt = GENERATE_PROMPT.format(n=n, question=question)
    async with lm("generate").stream_lines(prompt, temperature=0.9, max_tokens=40 * n) as lines:
        async for line in lines:
            if candidate := clean_line(line):
                yield candidate


@stage(output=True)
async def judgement(
    candidates: str, question: str, min_score: Annotated[int, Field(ge=0, le=FULL_MARKS)] = 6
) -> dict:
    """The judge's problems with one candidate, its grade, and whether it passes."""
    engine = lm("judge")
    review = await engine.complete(
        JUDGE_PROMPT.format(question=question, candidate=candidates), temperature=0, max_tokens=160
    )
    problems = problems_in(review)
    points = grade(problems)
    return {"candidate": candidates, "score": points, "passed": points >= min_score,
            "problems": problems, "lm": engine.name}


@stage(aggregate=ops.filter(passed), over="candidate", fanout="kept", output=True)
def kept(judgement: dict) -> dict:
    """The candidates that passed, in the order they were written, with their grades."""
    return {key: judgement[key] for key in ("candidate", "score", "passed")}


@stage(aggregate=ops.topk(BEST, key=score), over="kept")
def best(kept: dict) -> dict:
    """The best candidates that passed, highest grade first (ties: the earlier one)."""
    return kept
