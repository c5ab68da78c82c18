"""The API tests' shared server: one real server (tiny checkpoint, CPU) for the whole session.

Test modules load this with `pytest_plugins = ("tests.api_fixtures",)`, which registers the fixture
once, so every API test module talks to the same server instead of starting its own.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import Server


@pytest.fixture(scope="session")
def api_server(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tiny_dir, tmp_path_factory.mktemp("api-data")).start()
    yield server
    server.stop()
