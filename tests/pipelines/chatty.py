"""A stage that logs a warning for every word, and fails on "bad" in a helper of its own."""

import logging

from altoflow import stage

log = logging.getLogger("chatty")


def _check(word: str) -> str:
    if word == "bad":
        raise ValueError(f"cannot check {word!r}")
    return word


@stage(fanout="word")
def words(text: str):
    yield from text.split()


@stage
def checked(words: str) -> str:
    log.warning("checking %s", words)
    return _check(words)
