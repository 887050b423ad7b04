"""Loading a LangGraph twin from benchmarks/langgraph for its test."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_twin(app: str) -> ModuleType:
    """``benchmarks/langgraph/<app>.py``, imported once."""
    name = f"langgraph_twin_{app}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "langgraph" / f"{app}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
