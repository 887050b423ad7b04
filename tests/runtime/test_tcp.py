"""Replicas on other machines: TCP (plain or TLS) with a shared-secret handshake, and the\nlimits a peer is held to before that handshake lets it in."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import altoflow
from altoflow import wire as fr
from altoflow.compiler import load_target
from altoflow.wire.frame import DEFAULT_MAX_FRAME_SIZE, HEADER_SIZE
from altoflow.runtime.router import Router
from altoflow.runtime.supervisor import Supervisor
from altoflow.runtime.tls import server_context

TARGET = str(Path(__file__).resolve().parent.parent / "pipelines" / "slow.py")


def _worker(port: int, slot: int, secret: str) -> subprocess.Popen:
    env = {**os.environ, "ALTOFLOW_SECRET": secret}
    return subprocess.Popen(
        [sys.executable, "-m", "altoflow", "worker", "--target", TARGET, "--stage", "slow",
         "--slot", str(slot), "--connect", f"127.0.0.1:{port}"],
        env=env, stderr=subprocess.PIPE, text=True)


def test_remote_replicas_over_tcp():
    async def main():
        sup = Supervisor(load_target(TARGET).compiled, TARGET, listen=("127.0.0.1", 0),
                         secret=b"s3cret", remote=frozenset({"slow"}))
        await sup.__aenter__()
        workers = [_worker(sup.tcp_port, slot, "s3cret") for slot in range(2)]
        try:
            await sup.wait_ready(60)
            events = [e async for e in sup.router.submit({"n": 6})]
            assert events[0].value == sum(i * 10 for i in range(6))
            assert events[-1].type == "done"
        finally:
            await sup.stop()
            for w in workers:
                w.wait(timeout=30)  # they exit when the router goes away

    asyncio.run(main())


def test_a_stopped_tcp_worker_is_marked_down_its_work_runs_elsewhere_and_sigcont_adds_nothing():
    from altoflow.server.served import ServedIngress

    def worker(port: int, slot: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "altoflow", "worker", "--target", TARGET, "--stage", "slow",
             "--slot", str(slot), "--connect", f"127.0.0.1:{port}", "--heartbeat", "0.1"],
            env={**os.environ, "ALTOFLOW_SECRET": "s3cret"}, stderr=subprocess.PIPE, text=True)

    async def main():
        ingress = ServedIngress(TARGET, listen=("127.0.0.1", 0), secret=b"s3cret",
                                remote=frozenset({"slow"}), heartbeat=0.1, wait_ready=False)
        sup = ingress.supervisor
        await ingress.__aenter__()  # listens at once; the workers come in below
        workers = [worker(sup.tcp_port, slot) for slot in range(2)]
        try:
            assert await ingress.wait_started()
            # 48 invocations of 0.3 s on 2 x 4 credits: seconds of work, in flight on both.
            handles = [ingress.submit({"n": 12, "delay": 0.3}) for _ in range(4)]
            tasks = [asyncio.ensure_future(asyncio.wait_for(_events(h), 60)) for h in handles]
            await asyncio.sleep(0.5)
            os.kill(workers[0].pid, signal.SIGSTOP)
            while ("slow", 0) not in sup.router.silent:  # 5 heartbeats of 0.1 s without a word
                await asyncio.sleep(0.02)
            health = ingress.health()
            assert health["status"] == "degraded" and health["silent"] == ["slow#0"], health
            assert health["replicas"]["slow"] == {"ready": 1, "desired": 2}
            assert not all(t.done() for t in tasks)  # requests were still running when it woke
            # Woken, it finds its connection closed and exits; what it had computed meanwhile
            # never reaches a request (each output once: the sums are the reference's).
            os.kill(workers[0].pid, signal.SIGCONT)
            code = await asyncio.to_thread(workers[0].wait, 30)
            assert code >= 0, "it exited on its own, not by a signal"
            for events in await asyncio.gather(*tasks):
                assert events[-1].type == "done", events[-1]
                assert [e.value for e in events if e.type == "output"] == [sum(i * 10 for i in range(12))]
            assert any(e.what == "redispatch" and e.stage == "slow" for e in sup.router.core.story())
            # A worker for the slot connects again: healthy, and it serves.
            workers[0] = worker(sup.tcp_port, 0)
            await sup.wait_ready(60)
            assert ingress.health()["status"] == "ok" and ingress.health()["silent"] == []
            events = await asyncio.wait_for(_events(ingress.submit({"n": 6})), 30)
            assert events[0].value == sum(i * 10 for i in range(6))
        finally:
            for w in workers:
                if w.poll() is None:
                    os.kill(w.pid, signal.SIGCONT)
            await sup.stop()
            for w in workers:
                w.wait(timeout=30)

    asyncio.run(main())


async def _events(handle) -> list:
    return [e async for e in handle]


def test_a_replica_with_the_wrong_secret_is_turned_away():
    async def main():
        sup = Supervisor(load_target(TARGET).compiled, TARGET, listen=("127.0.0.1", 0),
                         secret=b"s3cret", remote=frozenset({"slow"}))
        await sup.__aenter__()
        intruder = _worker(sup.tcp_port, 0, "guess")
        try:
            for _ in range(100):  # the router hangs up on it, so it exits on its own
                if intruder.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            assert intruder.poll() is not None, "the router kept a replica that failed the handshake"
            assert sup.router.ready()["slow"] == 0
            # The router itself is fine: a replica with the right secret still gets in.
            honest = _worker(sup.tcp_port, 0, "s3cret")
            for _ in range(100):
                if sup.router.ready()["slow"] == 1:
                    break
                await asyncio.sleep(0.1)
            assert sup.router.ready()["slow"] == 1
        finally:
            await sup.stop()
        honest.wait(timeout=30)

    asyncio.run(main())


# -- before the handshake: a stranger gets small frames, little time and few connections ---------


def _header_claiming(length: int) -> bytes:
    """A valid DATA header that announces a frame of ``length`` bytes."""
    frame = bytearray(fr.encode_frame(fr.Kind.DATA, stage=0, request_id=1, payload=b"x"))
    frame[:4] = length.to_bytes(4, "little")
    return bytes(frame[:HEADER_SIZE])


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A raw TCP connection to the router, with the router's first bytes (its CHALLENGE)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    first = await asyncio.wait_for(reader.read(4096), 30)
    return reader, writer, first


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the router sends until it hangs up (bounded: a router that never hangs up
    fails the test instead of hanging it). A reset is a hang-up too."""
    try:
        return await asyncio.wait_for(reader.read(), 30)
    except ConnectionResetError:
        return b""


async def _router(**limits) -> tuple[Router, int]:
    router = Router(load_target(TARGET).compiled)
    port = await router.listen_tcp("127.0.0.1", 0, b"s3cret", **limits)
    return router, port


def test_a_huge_frame_before_hello_is_cut_off_at_its_header():
    async def main():
        router, port = await _router()
        try:
            reader, writer, challenge = await _open(port)
            assert challenge, "the router says CHALLENGE first"
            # 64 MiB announced (the most a replica's frame may be once it is in), 1 MiB sent.
            writer.write(_header_claiming(DEFAULT_MAX_FRAME_SIZE))
            writer.write(b"\0" * (1 << 20))
            try:
                await writer.drain()
            except ConnectionError:
                pass  # it hung up while we were still sending: what we want
            assert await _until_closed(reader) == b""
            stats = router.tcp_statistics()
            assert stats.pending == 0 and stats.pending_buffered_bytes == 0
            writer.close()
        finally:
            await router.close()

    asyncio.run(main())


def test_the_router_holds_at_most_a_small_frame_of_a_connecting_peer():
    async def main():
        router, port = await _router()
        try:
            reader, writer, _ = await _open(port)
            # A frame that fits the limit, half sent: that is what the router may hold for it.
            writer.write(_header_claiming(fr.PRE_AUTH_MAX_FRAME_SIZE))
            writer.write(b"\0" * (fr.PRE_AUTH_MAX_FRAME_SIZE // 2))
            await writer.drain()
            for _ in range(300):
                if router.tcp_statistics().pending_buffered_bytes >= fr.PRE_AUTH_MAX_FRAME_SIZE // 2:
                    break
                await asyncio.sleep(0.01)
            assert 0 < router.tcp_statistics().pending_buffered_bytes <= fr.PRE_AUTH_MAX_FRAME_SIZE
            # One byte over the limit is refused outright.
            other, other_writer, _ = await _open(port)
            other_writer.write(_header_claiming(fr.PRE_AUTH_MAX_FRAME_SIZE + 1))
            assert await _until_closed(other) == b""
            writer.close()
            other_writer.close()
        finally:
            await router.close()

    asyncio.run(main())


def test_a_peer_that_says_nothing_is_dropped_after_the_handshake_timeout():
    async def main():
        router, port = await _router(handshake_timeout=0.2)
        try:
            reader, writer, challenge = await _open(port)
            assert challenge
            assert await _until_closed(reader) == b""
            assert router.tcp_statistics().timed_out == 1
            assert router.tcp_statistics().pending == 0
            writer.close()
        finally:
            await router.close()

    asyncio.run(main())


def test_connections_past_the_pending_cap_are_closed_at_once():
    async def main():
        router, port = await _router(max_pending=4, max_connections=16)
        try:
            held = [await _open(port) for _ in range(4)]
            assert all(challenge for _, _, challenge in held)
            assert router.tcp_statistics().pending == 4
            # The fifth gets no CHALLENGE, only the close.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await _until_closed(reader) == b""
            assert router.tcp_statistics().refused == 1
            writer.close()
            # A slot frees when a pending peer goes away, and the next one is let in.
            held[0][1].close()
            for _ in range(300):
                if router.tcp_statistics().pending == 3:
                    break
                await asyncio.sleep(0.01)
            assert router.tcp_statistics().pending == 3
            _, again, challenge = await _open(port)
            assert challenge
            again.close()
            for _, w, _ in held[1:]:
                w.close()
        finally:
            await router.close()

    asyncio.run(main())


def test_the_total_connection_cap_counts_replicas_that_are_in():
    async def main():
        sup = Supervisor(load_target(TARGET).compiled, TARGET, listen=("127.0.0.1", 0),
                         secret=b"s3cret", remote=frozenset({"slow"}))
        await sup.__aenter__()
        workers = []
        try:
            sup.router.max_connections = 3  # two replicas in, then room for one stranger
            workers = [_worker(sup.tcp_port, slot, "s3cret") for slot in range(2)]
            await sup.wait_ready(60)
            assert sup.router.tcp_statistics().authenticated == 2
            _, first, challenge = await _open(sup.tcp_port)
            assert challenge
            reader, writer = await asyncio.open_connection("127.0.0.1", sup.tcp_port)
            assert await _until_closed(reader) == b""
            assert sup.router.tcp_statistics().refused == 1
            first.close()
            writer.close()
        finally:
            await sup.stop()
            for w in workers:
                w.wait(timeout=30)

    asyncio.run(main())


# -- TLS ------------------------------------------------------------------------------------------


def _self_signed(directory: Path, name: str) -> tuple[str, str]:
    """A throwaway certificate for 127.0.0.1 and its key, made with the openssl command line."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return str(cert), str(key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, tuple[str, str]]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificates")
    directory = tmp_path_factory.mktemp("tls")
    return {"router": _self_signed(directory, "router"), "other": _self_signed(directory, "other")}


def _tls_worker(port: int, slot: int, *tls: str) -> subprocess.Popen:
    env = {**os.environ, "ALTOFLOW_SECRET": "s3cret"}
    return subprocess.Popen(
        [sys.executable, "-m", "altoflow", "worker", "--target", TARGET, "--stage", "slow",
         "--slot", str(slot), "--connect", f"127.0.0.1:{port}", *tls],
        env=env, stderr=subprocess.PIPE, text=True)


def _tls_supervisor(certs, **options) -> Supervisor:
    return Supervisor(load_target(TARGET).compiled, TARGET, listen=("127.0.0.1", 0),
                      secret=b"s3cret", remote=frozenset({"slow"}),
                      tls=server_context(*certs["router"]), **options)


def test_replicas_over_tls_serve_what_run_returns(certs):
    ca = certs["router"][0]
    expected = {n: altoflow.run(TARGET, n=n)["total"] for n in (0, 1, 7)}

    async def main():
        sup = _tls_supervisor(certs)
        await sup.__aenter__()
        workers = [_tls_worker(sup.tcp_port, slot, "--tls-ca", ca) for slot in range(2)]
        try:
            await sup.wait_ready(60)
            for n, total in expected.items():
                events = [e async for e in sup.router.submit({"n": n})]
                assert [e.type for e in events] == ["output", "done"]
                assert events[0].value == total
        finally:
            await sup.stop()
            for w in workers:
                w.wait(timeout=30)

    asyncio.run(main())


def test_connections_stalled_in_the_tls_handshake_count_against_the_caps(certs):
    # Peers that open the TLS port and never say a word hold a pending place each (until the
    # handshake timeout), so a flood of them is turned away like one of plain connections.
    async def main():
        router = Router(load_target(TARGET).compiled)
        port = await router.listen_tcp("127.0.0.1", 0, b"s3cret", tls=server_context(*certs["router"]),
                                       handshake_timeout=30, max_pending=3, max_connections=16)
        try:
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            for _ in range(300):
                if router.tcp_statistics().pending == 3:
                    break
                await asyncio.sleep(0.01)
            assert router.tcp_statistics().pending == 3
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await _until_closed(reader) == b""
            assert router.tcp_statistics().refused == 1
            writer.close()
            for _, w in held:
                w.close()
            for _ in range(300):
                if router.tcp_statistics().pending == 0:
                    break
                await asyncio.sleep(0.01)
            assert router.tcp_statistics().pending == 0
        finally:
            await router.close()

    asyncio.run(main())


def _exit_of(worker: subprocess.Popen) -> tuple[int, str]:
    _, err = worker.communicate(timeout=60)
    return worker.returncode, err


def test_a_plain_tcp_worker_against_a_tls_port_is_told_to_use_tls(certs):
    async def main():
        sup = _tls_supervisor(certs, handshake_timeout=0.5)
        await sup.__aenter__()
        try:
            plain = _tls_worker(sup.tcp_port, 0)
            code, err = await asyncio.to_thread(_exit_of, plain)
            assert code == 1
            assert "serves TLS" in err and "--tls-ca" in err, err
            assert sup.router.ready()["slow"] == 0
        finally:
            await sup.stop()

    asyncio.run(main())


def test_a_worker_with_the_wrong_ca_is_told_so(certs):
    async def main():
        sup = _tls_supervisor(certs)
        await sup.__aenter__()
        try:
            lost = _tls_worker(sup.tcp_port, 0, "--tls-ca", certs["other"][0])
            code, err = await asyncio.to_thread(_exit_of, lost)
            assert code == 1
            assert "is not the one --tls-ca trusts" in err and "the CA that signed" in err, err
            assert sup.router.ready()["slow"] == 0
        finally:
            await sup.stop()

    asyncio.run(main())


def test_a_tls_worker_against_a_plain_port_is_told_so(certs):
    async def main():
        sup = Supervisor(load_target(TARGET).compiled, TARGET, listen=("127.0.0.1", 0),
                         secret=b"s3cret", remote=frozenset({"slow"}))
        await sup.__aenter__()
        try:
            worker = _tls_worker(sup.tcp_port, 0, "--tls-ca", certs["router"][0])
            code, err = await asyncio.to_thread(_exit_of, worker)
            assert code == 1
            assert "TLS handshake with the router" in err and "serves TLS" in err, err
        finally:
            await sup.stop()

    asyncio.run(main())


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ALTOFLOW_SECRET": "s3cret"}
    return subprocess.run([sys.executable, "-m", "altoflow", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_tls_flags_that_cannot_work_are_refused_before_anything_starts(certs, tmp_path):
    cert, key = certs["router"]
    half = _cli("serve", TARGET, "--listen", "127.0.0.1:7001", "--tls-cert", cert)
    assert half.returncode == 2 and "both --tls-cert PATH and --tls-key PATH" in half.stderr
    no_listen = _cli("serve", TARGET, "--tls-cert", cert, "--tls-key", key)
    assert no_listen.returncode == 2 and "add --listen HOST:PORT" in no_listen.stderr
    swapped = _cli("serve", TARGET, "--listen", "127.0.0.1:7001", "--tls-cert", cert,
                   "--tls-key", certs["other"][1])
    assert swapped.returncode == 2 and f"cannot load --tls-cert {cert}" in swapped.stderr
    missing = _cli("worker", "--target", TARGET, "--stage", "slow", "--connect", "127.0.0.1:1",
                   "--tls-ca", str(tmp_path / "nope.pem"))
    assert missing.returncode == 1 and "cannot load --tls-ca" in missing.stderr


def test_closing_the_router_hangs_up_on_peers_still_in_their_handshake():
    async def main():
        router, port = await _router(handshake_timeout=600)  # the close, not the timeout
        reader, writer, challenge = await _open(port)
        assert challenge
        await router.close()
        assert await _until_closed(reader) == b""
        assert router.tcp_statistics().pending == 0
        writer.close()

    asyncio.run(main())
