from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.asgi import api_app  # noqa: F401  (fixture: the API in process)
from tests.support.daemon import MxdProcess, running_daemon
from tests.support.store import db, memory_db  # noqa: F401  (fixtures: the store in process)


@pytest.fixture
def mxd(tmp_path: Path) -> Iterator[MxdProcess]:
    """A real mxd daemon (subprocess) serving example.test with mailbox agent@example.test."""
    with running_daemon(tmp_path / "data", mailboxes=["agent@example.test"]) as proc:
        yield proc
