from contextlib import ExitStack

import pytest
import serving_apps

from altoflow.server import LocalIngress, create_app, serve_in_thread


@pytest.fixture
def gate() -> serving_apps.Gate:
    serving_apps.GATE = serving_apps.Gate()
    return serving_apps.GATE


@pytest.fixture
def serve():
    """``serve(target, **LocalIngress options) -> base URL`` of a uvicorn server on a thread."""
    with ExitStack() as stack:

        def start(target, **options) -> str:
            return stack.enter_context(serve_in_thread(create_app(LocalIngress(target, **options))))

        yield start
        serving_apps.GATE.release.set()  # let held requests finish, so servers stop at once
