"""The ideal: each application's critical path on the simulator's own clock, with no cost but the LM's.

The ideal of a request is how long it takes when orchestration costs nothing: only the
simulated LM calls take time, each as the timing model says, and every call starts the moment
its inputs exist. We get it by running the floor (``benchmarks/floor/<app>.py``, which starts
every call as soon as its inputs exist) on an event loop whose clock is virtual: the loop never
sleeps, it jumps its clock to the next timer when nothing is ready, so the Python work between
LM calls (prompts, BM25, parsing, the floor's own tasks) takes no time at all, and the LM calls
take exactly what the in-process ``SimulatedLM`` on that clock schedules (its pure core,
``SimPool``, with the profile's pools, queues and batch slowdown). The app's own functions run,
so the DAG of calls (which call waits for which, how many claims, queries, candidates) is the
app's, with the same deterministic text as every other system.

- ``streaming``: the floor as it is: each line of a streamed call goes on when it is written.
- ``barrier``: the floor with ``barrier=True``: a streamed call's lines go on when it ends.

``ideal_load(app, profile, rate, duration)`` replays a Poisson schedule the same way (the load
generator on the virtual clock, all requests sharing the profile's engines), so the ideal under
load includes the contention for engines and nothing else; ``one_request`` is the low-load ideal.
"""

from __future__ import annotations

import asyncio
import importlib.util
import selectors
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
APPS = ("claimverify", "ragmapreduce", "selfconsistency", "judgefilter")


class _VirtualSelector(selectors.DefaultSelector):
    """Polls without waiting; instead of sleeping for ``timeout`` it moves the loop's clock on."""

    def __init__(self, advance: Callable[[float], None]) -> None:
        super().__init__()
        self._advance = advance

    def select(self, timeout: float | None = None) -> list:
        ready = super().select(0)
        if not ready and timeout is not None and timeout > 0:
            self._advance(timeout)
        elif not ready and timeout is None:
            raise RuntimeError(
                "the virtual-clock loop has nothing to run and no timer: a task waits on a "
                "thread or a socket, which the ideal does not model (run the floor inline)"
            )
        return ready


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on a virtual clock: ``time()`` moves only when every task waits on a timer."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_VirtualSelector(self._advance))

    def _advance(self, seconds: float) -> None:
        self._now += seconds

    def time(self) -> float:
        return self._now


def floor(app: str) -> Any:
    """The floor module of ``app`` (loaded once per process)."""
    name = f"floor_{app}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / f"{app}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _engine(profile: Any, loop: VirtualClockLoop, max_batch: int | None = None) -> Any:
    """The in-process simulated LM on ``loop``'s clock; ``max_batch`` as ``sim-lm --max-batch``."""
    from altoflow.lm import SimulatedLM, TimingModel

    timing = TimingModel() if max_batch is None else TimingModel(max_batch=max_batch)
    return SimulatedLM(timing, profile=profile, clock=loop.time)


def _run(main: Callable[[VirtualClockLoop], Any]) -> Any:
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.close()


def one_request(app: str, fields: dict[str, Any], *, profile: Any = "unbounded",
                barrier: bool = False, max_batch: int | None = None) -> dict[str, float]:
    """The ideal of one request alone on the virtual clock: ``first_output_s``, ``latency_s``,
    and ``pools``, the statistics of each of the profile's pools after it.

    ``profile`` is a profile's name or a ``Profile``; ``max_batch`` is every engine's batch
    limit where the profile's pool leaves it to the timing model (``sim-lm --max-batch``)."""
    from altoflow.lm import use_loop_lm

    async def main(loop: VirtualClockLoop) -> dict[str, Any]:
        engine = _engine(profile, loop, max_batch)
        use_loop_lm(engine)
        start, first = loop.time(), None
        async for event in floor(app).stream(**fields, barrier=barrier):
            if event["type"] == "output" and first is None:
                first = loop.time() - start
        return {"first_output_s": first, "latency_s": loop.time() - start,
                "pools": engine.pool_stats()}

    return _run(main)


def ideal_load(app: str, inputs: list[dict[str, Any]], *, profile: Any, rate: float,
               duration: float, seed: int = 0, barrier: bool = False,
               max_batch: int | None = None) -> Any:
    """The load generator's ``LoadRun`` for a Poisson load on the ideal system (``profile``
    and ``max_batch`` as for :func:`one_request`)."""
    sys.path.insert(0, str(HERE.parent))
    try:
        from loadgen import run_load
    finally:
        sys.path.remove(str(HERE.parent))
    from altoflow.lm import use_loop_lm

    async def target(fields: dict[str, Any]) -> AsyncIterator[dict]:
        async for event in floor(app).stream(**fields, barrier=barrier):
            yield event
        yield {"type": "done"}

    async def main(loop: VirtualClockLoop) -> Any:
        use_loop_lm(_engine(profile, loop, max_batch))
        return await run_load(target, inputs, rate=rate, duration=duration, seed=seed,
                              clock=loop.time)

    return _run(main)
