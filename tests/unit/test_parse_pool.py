"""The parse workers of big imports come from one budget per process: mailboxes that
import at once share it (their memory does not grow with their number), and an import
that finds it spent parses in its own process, losing nothing. A pool spawns its
workers when started (warm before the first batch) and keeps them until it stops."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime

import pytest

from keepword.mail.parse import ParsedMessage, parse_message
from keepword.pipeline import ingest, parse_workers
from keepword.pipeline.parse_workers import ParsePool


def _mail(n: int) -> bytes:
    return (
        f"From: c{n}@example.org\r\nTo: support@shop.example\r\nSubject: Order {n}\r\n"
        f"Message-ID: <m{n}@example.org>\r\n\r\nWhere is order {n}?\r\n"
    ).encode()


@pytest.fixture(autouse=True)
def _two_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parse_workers, "PARSE_WORKERS", 2)


def test_imports_at_once_share_the_processs_parse_workers() -> None:
    with ParsePool(2) as first:
        first.start()
        with ParsePool(2) as second:
            assert (first.workers, second.start().workers) == (2, 0)
        with ParsePool(1) as third:
            assert third.start().workers == 0
    with ParsePool(2) as later:  # given back, also by the pool that got none
        assert later.start().workers == 2


def test_a_pool_not_started_takes_no_worker() -> None:
    with ParsePool(2) as idle:
        assert not idle.parallel and idle.workers == 0
        with ParsePool(2) as pool:
            assert pool.start().workers == 2
    assert idle.submit([_mail(1)]) is None


def test_a_pool_given_back_after_an_error_frees_its_workers() -> None:
    with pytest.raises(RuntimeError), ParsePool(2) as pool:
        assert pool.start().workers == 2
        raise RuntimeError("storing failed")
    with ParsePool(2) as again:
        assert again.start().workers == 2


def test_an_import_without_a_worker_parses_in_process() -> None:
    raws = [_mail(n) for n in (1, 2)]
    with ParsePool(2) as busy, ParsePool(2) as pool:
        assert busy.start().workers == 2 and pool.start().workers == 0
        parsed = pool.parsed(raws, pool.submit(raws))
    assert [p.subject for p in parsed] == ["Order 1", "Order 2"]


def test_a_worker_parses_a_batch_in_order() -> None:
    raws = [_mail(n) for n in range(1, 6)]
    with ParsePool(1) as pool:
        future = pool.start().submit(raws)
        assert future is not None  # parsed in the worker, not in this process
        parsed = pool.parsed(raws, future)
    assert [p.message_id for p in parsed] == [f"m{n}@example.org" for n in range(1, 6)]


def test_a_started_pool_has_every_worker_up_before_its_first_batch_and_keeps_them() -> None:
    with ParsePool(2) as pool:
        spawned = pool.start().worker_pids()  # the warm-up tasks alone: no batch yet
        assert len(spawned) == 2 and os.getpid() not in spawned
        assert pool.start().worker_pids() == spawned  # a second start spawns nothing
        assert pool.workers == 2
        raws = [_mail(n) for n in range(1, 4)]
        for _ in range(3):  # batch after batch in the same two processes
            assert len(pool.parsed(raws, pool.submit(raws))) == 3
        assert pool.worker_pids() == spawned
    assert not pool.parallel and pool.workers == 0


@dataclass(frozen=True)
class _Fetched:
    uid: int
    raw: bytes
    internaldate: datetime | None = None


class _Session:
    """Fetches from memory (what _parsed_batches asks of an IMAP session)."""

    def fetch(self, uids: Sequence[int]) -> list[_Fetched]:
        return [_Fetched(uid, _mail(uid)) for uid in uids]


class _QueuedPool(ParsePool):
    """Two workers that never begin: every batch stays queued (a pending future)."""

    def __init__(self) -> None:
        super().__init__(2)
        self.workers = 2
        self.futures: list[Future[list[ParsedMessage]]] = []

    def submit(self, raws: Sequence[bytes]) -> Future[list[ParsedMessage]] | None:
        self.futures.append(Future())
        return self.futures[-1]

    def parsed(
        self, raws: Sequence[bytes], future: Future[list[ParsedMessage]] | None
    ) -> list[ParsedMessage]:
        return [parse_message(raw) for raw in raws]


def test_a_folder_stopped_early_leaves_no_batch_queued_for_the_pools_next_folder() -> None:
    pool = _QueuedPool()
    batches = iter([[1, 2], [3, 4], [5, 6], [7, 8]])
    stream = ingest._parsed_batches(_Session(), batches, pool, max_bytes=10**6)
    first, items = next(stream)
    assert first == [1, 2] and [i.uid for i in items] == [1, 2]
    stream.close()  # the folder's poll failed while storing: the pool is kept
    assert len(pool.futures) == 3
    assert all(future.cancelled() for future in pool.futures[1:])
