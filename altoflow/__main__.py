"""``python -m altoflow``: the ``altoflow`` command (the supervisor starts replicas this way)."""

from altoflow.cli import main

main()
