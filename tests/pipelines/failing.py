"""A stage that fails on one item: the word "bad"."""

from altoflow import stage


@stage(fanout="word")
def words(text: str):
    yield from text.split()


@stage
def checked(words: str) -> str:
    if words == "bad":
        raise ValueError(f"cannot check {words!r}")
    return words
