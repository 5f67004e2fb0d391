"""File-system set-up the peers share."""
from __future__ import annotations

import os
from pathlib import Path


def traversable_by_all(directory: Path) -> None:
    """Let another user (a peer's unprivileged daemon) reach `directory`: give every ancestor that lacks it
    search permission for group and others (pytest's tmp dirs are 0700)."""
    for parent in [directory, *directory.parents]:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode & 0o777
        if not mode & 0o001:
            os.chmod(parent, mode | 0o011)
