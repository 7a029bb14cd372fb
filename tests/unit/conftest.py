"""Fixtures several unit test modules share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.journald_fake import FakeJournald


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[FakeJournald]:
    """A fake journald socket in tmp_path that parses what it receives."""
    j = FakeJournald(tmp_path / "journal.sock")
    yield j
    j.close()


@pytest.fixture(params=[True, False], ids=["front", "aiohttp"])
def front(request: pytest.FixtureRequest) -> bool:
    """Both ways a gateway connection is served: the front protocol's fast path, and aiohttp alone."""
    return bool(request.param)
