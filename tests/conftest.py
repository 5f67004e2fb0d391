from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.daemon import MxdProcess


@pytest.fixture
def mxd(tmp_path: Path) -> Iterator[MxdProcess]:
    """A real mxd daemon (subprocess) serving example.test with mailbox agent@example.test."""
    proc = MxdProcess(tmp_path / "data")
    proc.init()
    proc.start()
    r = proc.api("POST", "/api/mailboxes", json={"address": "agent@example.test"})
    assert r.status_code == 201, r.text
    yield proc
    proc.stop()
