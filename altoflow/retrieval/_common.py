"""What BM25 and ColBERT share: the ``Hit`` they return and how they ask for their extras.

Nothing here imports a third-party package, so ``import altoflow.retrieval`` works on a bare
install; each backend imports its heavy dependencies through ``require`` when first used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Hit:
    """One retrieved or reranked document: its id, the score that ranked it, and its text."""

    id: str
    score: float
    text: str


class MissingExtraError(ImportError):
    """A retrieval backend needs a package that is not installed; the message names the extra."""


def require(module: str, *, extra: str, needed_for: str) -> ModuleType:
    """Import ``module`` or raise ``MissingExtraError`` naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # Only a missing top-level package is the user's missing extra; an ImportError from
        # inside an installed package is a real bug there and must surface unchanged.
        if exc.name is None or exc.name.split(".")[0] != module.split(".")[0]:
            raise
        raise MissingExtraError(
            f"{needed_for} needs the Python package '{module}', which is not installed.\n"
            f"Install the extra:  pip install 'altoflow[{extra}]'"
        ) from exc
