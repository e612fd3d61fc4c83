from __future__ import annotations

from typing import Iterator

import pytest

from .support import MODELS, Server


@pytest.fixture
def start_server() -> Iterator:
    """Factory: start_server(model, *flags) → a running Server, stopped after the test."""
    started: list[Server] = []

    def start(model: str, *args: str, **kw: object) -> Server:
        srv = Server(model, *args, **kw)  # type: ignore[arg-type]
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture(params=MODELS)
def server(request: pytest.FixtureRequest, start_server) -> Server:
    """Each test using this runs once per model."""
    return start_server(request.param)
