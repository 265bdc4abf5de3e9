"""Fixtures the drills share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack.redis import RedisServer


@pytest.fixture
def drill_redis(workdir: Path) -> Iterator[RedisServer]:
    """A redis-server of the drill's own (a drill may kill it or flood it), on a free port."""
    with RedisServer(workdir / "drills", name="drill-redis") as server:
        yield server
