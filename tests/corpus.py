"""Where the shared test mail lives: the notmuch corpora beside the repository, and CPython's email test messages."""
from __future__ import annotations

import sysconfig
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "notmuch"
CPYTHON_EMAIL = Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"


def corpus_files(sub: str) -> list[Path]:
    """Every message file under CORPUS/sub, sorted (the corpus README is not a message)."""
    return sorted(p for p in (CORPUS / sub).rglob("*") if p.is_file() and p.name != "README")


def corpus_message(name: str) -> bytes:
    """The raw bytes of one corpus file, by its path below CORPUS."""
    return (CORPUS / name).read_bytes()
