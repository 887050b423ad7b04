"""A class stage whose __init__ fails: served, its replica dies before it connects."""

from altoflow import stage


@stage
class Scorer:
    def __init__(self) -> None:
        raise RuntimeError("the model file is missing")

    def __call__(self, text: str) -> int:
        return len(text)
