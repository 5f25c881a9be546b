"""The parse workers of big imports come from one budget per process: mailboxes that
import at once share it (their memory does not grow with their number), and an import
that finds it spent parses in its own process, losing nothing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pytest

from keepword.pipeline import ingest


@dataclass(frozen=True)
class _Fetched:
    uid: int
    raw: bytes
    internaldate: datetime | None = None


def _mail(n: int) -> bytes:
    return (
        f"From: c{n}@example.org\r\nTo: support@shop.example\r\nSubject: Order {n}\r\n"
        f"Message-ID: <m{n}@example.org>\r\n\r\nWhere is order {n}?\r\n"
    ).encode()


@pytest.fixture(autouse=True)
def _two_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "PARSE_WORKERS", 2)


def test_imports_at_once_share_the_processs_parse_workers() -> None:
    with ingest._ParsePool(2) as first:
        with ingest._ParsePool(2) as second:
            assert (first.workers, second.workers) == (2, 0)
        with ingest._ParsePool(1) as third:
            assert third.workers == 0
    with ingest._ParsePool(2) as later:  # given back, also by the pool that got none
        assert later.workers == 2


def test_a_pool_given_back_after_an_error_frees_its_workers() -> None:
    with pytest.raises(RuntimeError), ingest._ParsePool(2) as pool:
        assert pool.workers == 2
        raise RuntimeError("storing failed")
    with ingest._ParsePool(2) as again:
        assert again.workers == 2


def test_an_import_without_a_worker_parses_in_process() -> None:
    fetched = [_Fetched(uid=n, raw=_mail(n)) for n in (1, 2)]
    with ingest._ParsePool(2) as busy, ingest._ParsePool(2) as pool:
        assert busy.workers == 2 and pool.workers == 0
        items = pool.collect(fetched, pool.submit(fetched))
    assert [(i.uid, i.parsed.subject) for i in items] == [(1, "Order 1"), (2, "Order 2")]


def test_a_worker_parses_a_batch_in_order() -> None:
    fetched = [_Fetched(uid=n, raw=_mail(n)) for n in range(1, 6)]
    with ingest._ParsePool(1) as pool:
        future = pool.submit(fetched)
        assert future is not None  # parsed in the worker, not in this process
        items = pool.collect(fetched, future)
    assert [i.parsed.message_id for i in items] == [f"m{n}@example.org" for n in range(1, 6)]
