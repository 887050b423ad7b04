"""altoflow: serve compound AI pipelines written as decorated Python functions.

The public surface is listed in ``__all__`` (docs/architecture.md, "The public contract");
everything else is internal.
"""

from altoflow import ops
from altoflow._errors import (
    CompileError,
    GraphError,
    InputError,
    LevelError,
    StageDefinitionError,
    StageError,
    TargetError,
)
from altoflow._partial import partial
from altoflow._result import Event, Result
from altoflow._stage import DROP, stage
from altoflow.client import Client
from altoflow.compiler import Pipeline
from altoflow.runtime.local import arun, run

__version__ = "0.1.0"

__all__ = [
    "DROP",
    "Client",
    "CompileError",
    "Event",
    "GraphError",
    "InputError",
    "LevelError",
    "Pipeline",
    "Result",
    "StageDefinitionError",
    "StageError",
    "TargetError",
    "arun",
    "ops",
    "partial",
    "run",
    "stage",
]
