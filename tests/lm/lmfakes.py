"""Helpers for the LM tests: a scripted engine and server subprocesses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Iterator, Sequence
from pathlib import Path

from altoflow.lm import LM
from altoflow.lm._base import ChatMessage, Sampling

ROOT = Path(__file__).resolve().parents[2]

#: Every async test runs under this limit (anyio.fail_after), so a hang fails instead of blocking.
TIMEOUT = 30.0


class ScriptedLM(LM):
    """An engine that yields a fixed list of chunks and records what happened to each call.

    ``pulled`` counts the chunks handed out so far; ``closed_after`` is the number of chunks that
    had been handed out when the generation was closed early (``None`` while it ran to the end).
    """

    name = "scripted"

    def __init__(self, chunks: Sequence[str]) -> None:
        super().__init__()
        self.chunks = list(chunks)
        self.pulled = 0
        self.closed_after: int | None = None
        self.finished = False
        self.calls: list[tuple[str | tuple[ChatMessage, ...], Sampling]] = []

    async def _generate(
        self, prompt: str | tuple[ChatMessage, ...], sampling: Sampling
    ) -> AsyncGenerator[str, None]:
        self.calls.append((prompt, sampling))
        try:
            for chunk in self.chunks:
                self.pulled += 1
                yield chunk
            self.finished = True
        finally:
            if not self.finished:
                self.closed_after = self.pulled


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, limit: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server did not answer {url} within {limit} s:\n{log.read_text()}")


def start_server(
    args: list[str], ready_path: str, tmp: Path, name: str
) -> Iterator[tuple[str, Path]]:
    """Start a server subprocess on a free port; yield (base URL, log file); stop it after."""
    port = free_port()
    log = tmp / f"{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, *args, "--port", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(base + ready_path, proc, log)
        yield base + "/v1", log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
