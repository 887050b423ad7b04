"""A stage whose replica dies on one input, for the poison-input tests of the served runtime."""

import os

from altoflow import stage


@stage(fanout="name", output=False)
async def names(text: str):
    for name in text.split():
        yield name


# One input at a time per replica, so that an innocent item never shares the poison's replica.
@stage(replicas=2, concurrency=1)
async def crash(names: str) -> str:
    if names == "poison":
        os._exit(1)
    return names.upper()
