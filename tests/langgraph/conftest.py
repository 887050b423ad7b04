"""The fast simulated LM the twin tests run on."""

from __future__ import annotations

import pytest


@pytest.fixture
def fast_simulated_lm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default simulated engine, 100 times faster than its calibrated timing."""
    for name in ("ALTOFLOW_LM", "ALTOFLOW_LM_URL", "ALTOFLOW_LM_MODEL", "ALTOFLOW_LM_SEED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALTOFLOW_LM_SPEED", "100")
