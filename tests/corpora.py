"""Where the shared real-world mail corpora are (../shared/corpora beside the checkout).

Set KEEPWORD_CORPORA to point elsewhere. Under CI (CI=true) a missing corpus is an
error, not a skip: those tests are the proof that no real-world mail is lost.
"""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def find_corpora() -> Path:
    candidates = [
        os.environ.get("KEEPWORD_CORPORA"),
        str(REPO.parent / "shared" / "corpora"),
        "/work/shared/corpora",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "index.csv").is_file():
            return Path(candidate)
    return REPO.parent / "shared" / "corpora"


CORPORA = find_corpora()
PRESENT = (CORPORA / "index.csv").is_file()

if not PRESENT and os.environ.get("CI"):
    raise RuntimeError(f"shared corpora not found (looked at {CORPORA}); set KEEPWORD_CORPORA")

needs_corpora = pytest.mark.skipif(not PRESENT, reason=f"shared corpora not found at {CORPORA}")


def corpus_rfc822() -> list[tuple[str, bytes]]:
    """(file, raw bytes) of every rfc822 mail of the corpora, in index order."""
    with (CORPORA / "index.csv").open(newline="") as index:
        files = [row["file"] for row in csv.DictReader(index) if row["kind"] == "rfc822"]
    found = []
    for name in files:
        data = (CORPORA / name).read_bytes()
        found.append((name, gzip.decompress(data) if name.endswith(".gz") else data))
    return found
