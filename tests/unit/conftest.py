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
