"""A class stage whose __init__ takes as long as the test says: it waits (at most 60 s) until
the file named by ALTOFLOW_TEST_GATE exists, as a replica loading a model would take a while."""

import os
import time

from altoflow import stage


@stage
class Model:
    def __init__(self) -> None:
        gate = os.environ.get("ALTOFLOW_TEST_GATE")
        deadline = time.monotonic() + 60
        while gate and not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)

    def __call__(self, text: str) -> int:
        return len(text)
