"""Where the shared test mail lives: the notmuch corpora beside the repository, and CPython's email test messages."""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path


def _find_corpus() -> Path:
    """shared/ sits beside the repository; $MXD_SHARED_DIR names it when the checkout lives elsewhere."""
    candidates = [Path(os.environ["MXD_SHARED_DIR"])] if os.environ.get("MXD_SHARED_DIR") else []
    candidates += [parent / "shared" for parent in Path(__file__).resolve().parents]
    candidates.append(Path("/work/shared"))
    for shared in candidates:
        if (shared / "corpus" / "notmuch").is_dir():
            return shared / "corpus" / "notmuch"
    raise RuntimeError("the shared test corpus was not found: put shared/ beside the repository "
                       "or set MXD_SHARED_DIR")


CORPUS = _find_corpus()
CPYTHON_EMAIL = Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"


def corpus_files(sub: str) -> list[Path]:
    """Every message file under CORPUS/sub, sorted (the corpus README is not a message)."""
    return sorted(p for p in (CORPUS / sub).rglob("*") if p.is_file() and p.name != "README")


def corpus_message(name: str) -> bytes:
    """The raw bytes of one corpus file, by its path below CORPUS."""
    return (CORPUS / name).read_bytes()
