import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import logging
import os

import pytest


@pytest.fixture(autouse=True)
def _logging_as_it_was():
    """A command run in-process (``altoflow run`` or ``serve`` under CliRunner) configures
    logging for the whole process, and serve sets ALTOFLOW_LOG_* for its replicas; put the
    handlers, levels and variables back for the tests after it."""
    root, ours = logging.getLogger(), logging.getLogger("altoflow")
    handlers, levels = root.handlers[:], (root.level, ours.level)
    names = ("ALTOFLOW_LOG_LEVEL", "ALTOFLOW_LOG_FORMAT")
    env = {name: os.environ.get(name) for name in names}
    yield
    root.handlers[:] = handlers
    root.setLevel(levels[0])
    ours.setLevel(levels[1])
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
