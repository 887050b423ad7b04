"""Flow control in the served runtime: a client that reads nothing and a fan-out far faster than
its aggregate both leave the router's memory bounded, and other requests are served meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import altoflow as af
from altoflow._errors import Overloaded
from altoflow.compiler import load_target
from altoflow.runtime.stream import EVENT_BYTES
from altoflow.runtime.supervisor import Supervisor
from altoflow.wire.frame import FANOUT_WINDOW

FLOOD = Path(__file__).resolve().parent.parent / "pipelines" / "flood.py"
READER = f"{FLOOD}:reader"
FANIN = f"{FLOOD}:fanin"


async def _events(handle):
    return [e async for e in handle]


async def _started(target: str, **kw) -> Supervisor:
    sup = Supervisor(load_target(target).compiled, target, **kw)
    await sup.__aenter__()
    await sup.wait_ready()
    return sup


async def _until(condition, what: str, timeout: float = 60) -> None:
    async def poll():
        while not condition():
            await asyncio.sleep(0.02)
    try:
        await asyncio.wait_for(poll(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


def _outputs(events) -> dict:
    return {(e.stage, tuple(e.ancestry.values())): e.value for e in events if e.type == "output"}


def _reference(target: str, **fields) -> dict:
    result = af.run(target, **fields)
    return {(e.stage, tuple(e.ancestry.values())): e.value for e in result.events if e.type == "output"}


BOUND = 256 * 1024
SIZE = 4096
# Once a request is paused, what was already on its way still arrives: at most a fan-out's
# window of items (the only stage that streams to the client here).
SLACK = FANOUT_WINDOW * (SIZE + EVENT_BYTES + 64)


def test_a_client_that_reads_nothing_holds_a_bounded_answer_while_others_are_served():
    n = 3000  # 12 MB of answer
    small_expected = _reference(READER, n=5, size=16)
    expected = _reference(READER, n=n, size=SIZE)

    async def main():
        sup = await _started(READER, max_buffered=BOUND)
        try:
            router = sup.router
            unread = router.submit({"n": n, "size": SIZE})
            await _until(lambda: router.core.statistics().paused == 1, "the unread request is paused")
            # Another request on the same replicas goes through meanwhile.
            other = await asyncio.wait_for(_events(router.submit({"n": 5, "size": 16})), 60)
            assert other[-1].type == "done", other[-1]
            assert _outputs(other) == small_expected
            await asyncio.sleep(0.3)  # time enough for a request not held back to run on
            channel = router.streams[unread.request_id]
            stats = channel.statistics()
            assert stats.full and stats.peak_bytes <= BOUND + SLACK, stats
            assert router.buffered_bytes() == stats.buffered_bytes
            # It is held back where it is produced: its generator did not run to its end.
            assert router.stats.items["chunks"] < n + 5
            # Read now, it is all there, as altoflow.run has it.
            events = await asyncio.wait_for(_events(unread), 120)
            assert events[-1].type == "done", events[-1]
            assert _outputs(events) == expected
            assert channel.statistics().peak_bytes <= BOUND + SLACK
            assert router.streams == {} and router.core.paused == set()
        finally:
            await sup.stop()

    asyncio.run(main())


def test_a_request_holds_its_slot_until_its_answer_is_read():
    async def main():
        sup = await _started(READER, max_inflight=1)
        try:
            router = sup.router
            first = router.submit({"n": 3, "size": 16})
            await _until(lambda: not router.requests, "the first request ends in the router")
            # It ended there, but its answer is unread: the slot is still taken.
            with pytest.raises(Overloaded, match=r"answers not read yet.*--max-inflight 1"):
                router.submit({"n": 1, "size": 16})
            assert (await _events(first))[-1].type == "done"
            second = await asyncio.wait_for(_events(router.submit({"n": 1, "size": 16})), 30)
            assert second[-1].type == "done"
            # A client that leaves frees its slot too.
            third = router.submit({"n": 1, "size": 16})
            await third.aclose()
            assert (await asyncio.wait_for(_events(router.submit({"n": 1, "size": 16})), 30))[-1].type == "done"
        finally:
            await sup.stop()

    asyncio.run(main())


def test_a_paused_request_survives_the_death_of_its_aggregate_replica():
    # Paused with its group open on `length`, whose replica dies: the group is replayed on the
    # next replica once the client reads on, and the answer is the reference's.
    n = 400
    expected = _reference(READER, n=n, size=2048)

    async def main():
        sup = await _started(READER, max_buffered=64 * 1024)
        try:
            router = sup.router
            unread = router.submit({"n": n, "size": 2048})
            await _until(lambda: router.core.statistics().paused == 1, "the request is paused")
            assert router.core.replay_buffered > 0  # its group's inputs are kept
            sup.kill("length", 0)
            await _until(lambda: any(e.what == "replica-down" and e.stage == "length"
                                     for e in router.core.story()), "the router sees the death")
            await sup.wait_ready()
            events = await asyncio.wait_for(_events(unread), 120)
            assert events[-1].type == "done", events[-1]
            assert _outputs(events) == expected
            story = router.core.story(unread.request_id)
            assert [e.what for e in story if e.what in ("pause", "replay")][:2] == ["pause", "replay"]
            assert router.core.replay_buffered == 0
        finally:
            await sup.stop()

    asyncio.run(main())


def test_a_huge_fan_out_into_an_aggregate_queues_little_and_starves_no_one():
    n = 200_000

    async def main():
        sup = await _started(FANIN)
        try:
            router = sup.router
            assert load_target(FANIN).compiled.plan.stage("total").replicas == 1  # one replica for all
            big = router.submit({"n": n})
            big_events = asyncio.ensure_future(_events(big))
            await _until(lambda: router.stats.items["items"] > 2000, "the fan-out streams")
            small = await asyncio.wait_for(_events(router.submit({"n": 50})), 60)
            assert [e.value for e in small if e.type == "output"] == [sum(range(50))]
            # Served beside the big one, not behind its backlog.
            assert not big_events.done()
            events = await asyncio.wait_for(big_events, 300)
            assert events[-1].type == "done", events[-1]
            assert [e.value for e in events if e.type == "output"] == [sum(range(n))]
            # What waited in the router's queues stayed within the fan-outs' windows (and the
            # aggregate's own credits), however many items went through.
            stats = router.core.statistics()
            assert stats.queued_peak <= 2 * FANOUT_WINDOW, stats
            assert sum(stats.queued.values()) == 0
        finally:
            await sup.stop()

    asyncio.run(main())


def test_over_http_a_client_that_never_reads_holds_its_slot_and_a_bounded_answer():
    # The real thing: a client that sends its request and reads nothing. The router holds at
    # most the bound of its answer (the rest is never made), a normal client is served beside
    # it, and the slot it holds comes free when it hangs up.
    import json
    import socket
    import time

    from altoflow import Client
    from altoflow.server import ServedIngress, create_app, serve_in_thread

    n = 3000
    ingress = ServedIngress(READER, max_buffered=BOUND, max_inflight=2)
    with serve_in_thread(create_app(ingress)) as url:
        router = ingress.router
        host, port = url.removeprefix("http://").rsplit(":", 1)
        body = json.dumps({"n": n, "size": SIZE}).encode()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect, so it binds
        sock.connect((host, int(port)))
        sock.sendall(b"POST /v1/run HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body))
        deadline = time.monotonic() + 60
        while router.core.statistics().paused != 1:
            assert time.monotonic() < deadline, "the unread request is not paused"
            time.sleep(0.02)
        result = Client(url).run(n=4, size=16)
        assert result["chunks"] == [f"{i:08d}" + "x" * 8 for i in range(4)]
        # The kernel's send buffer takes some of the answer first, so the stall settles a while
        # after the first pause: wait until the request is paused, its channel full and nothing
        # more is made, then the router holds no more than the bound.
        unread = max(router.streams.values(), key=lambda c: c.statistics().peak_bytes)
        deadline = time.monotonic() + 60
        made = -1
        while True:
            stats = unread.statistics()
            settled = stats.full and router.core.statistics().paused == 1
            if settled and router.stats.items["chunks"] == made:
                break
            assert time.monotonic() < deadline, f"the unread answer does not settle: {stats}"
            made = router.stats.items["chunks"] if settled else -1
            time.sleep(0.25)
        assert stats.peak_bytes <= BOUND + SLACK, stats
        assert router.stats.items["chunks"] < n
        sock.close()  # the reader hangs up: its request is cancelled and its slot freed
        deadline = time.monotonic() + 30
        while router.streams:
            assert time.monotonic() < deadline, "the slot of a client that left is not freed"
            time.sleep(0.02)
        assert router.core.statistics().paused == 0 and router.buffered_bytes() == 0
        assert Client(url).run(n=1, size=16)["length"] == 16


def test_a_paused_fan_out_does_not_hold_its_stage_s_only_place():
    # `lines` runs one invocation at a time; the unread request's waits for credit, and lends
    # its place: another request's invocation of the same stage runs meanwhile.
    target = f"{FLOOD}:listing"
    assert load_target(target).compiled.plan.stage("lines").concurrency == 1

    async def main():
        sup = await _started(target, max_buffered=BOUND)
        try:
            router = sup.router
            unread = router.submit({"n": 3000, "size": SIZE})
            await _until(lambda: router.core.statistics().paused == 1, "the unread request is paused")
            other = await asyncio.wait_for(_events(router.submit({"n": 3, "size": 16})), 60)
            assert [e.value for e in other if e.type == "output"] == [f"{i:08d}" + "y" * 8 for i in range(3)]
            events = await asyncio.wait_for(_events(unread), 120)
            assert events[-1].type == "done" and len(events) == 3001
        finally:
            await sup.stop()

    asyncio.run(main())
