"""Two stages that take as long as a request says, for shutdown tests of ``altoflow serve``.

``wait`` is async (a cancellation reaches it at its ``await``), ``block`` is sync and runs in a
thread (nothing can interrupt it). Each leaves a file ``started-STAGE-SECONDS-PID`` in
``$ALTOFLOW_TEST_MARKERS``, when set, once it runs, so a test knows its replica is busy.
"""

import asyncio
import os
import time

from altoflow import stage

MARKERS = os.environ.get("ALTOFLOW_TEST_MARKERS", "")


def _started(name: str, seconds: float) -> None:
    if MARKERS:
        open(os.path.join(MARKERS, f"started-{name}-{seconds:g}-{os.getpid()}"), "w").close()


@stage
async def wait(seconds: float = 3600.0) -> float:
    _started("wait", seconds)
    await asyncio.sleep(seconds)
    return seconds


@stage(concurrency=4)
def block(seconds: float = 3600.0) -> float:
    _started("block", seconds)
    time.sleep(seconds)
    return seconds
