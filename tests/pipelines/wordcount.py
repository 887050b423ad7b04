"""Words of a text: a fan-out, a map and a count. ``shout`` names only two of the stages."""

from altoflow import Pipeline, ops, stage


@stage(fanout="word")
def words(text: str):
    yield from text.split()


@stage
def upper(words: str) -> str:
    return words.upper()


@stage(aggregate=ops.count)
def total(words: str) -> str:
    return words


shout = Pipeline([words, upper], name="shout")
