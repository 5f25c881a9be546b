"""A first import triaged while it runs (pipeline.history) decides exactly what triage
after the import decides: on generated shared inboxes (the inbox and the team's Sent
folder, old mail found late, mail without a Date, a mail delivered twice) and on the
real-world corpus, over the real Dovecot. And `keepword import` leaves its history in
cases, its live mail to the daemon."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from sqlalchemy import Engine, select

from keepword.cli import ingest as cli_ingest
from keepword.config import load_config
from keepword.pipeline import ingest, parse_workers
from keepword.pipeline.acknowledge import acknowledge_case
from keepword.pipeline.ingest import MailboxPoller
from keepword.pipeline.triage import triage_pending
from keepword.runtime.service import TRIAGE_SLICE, Service
from keepword.store.db import make_engine, open_store
from keepword.store.facts_at_hand import FactsAtHand
from keepword.store.tables import message
from tests.corpora import corpus_rfc822
from tests.fixtures.chase_store import ALICE, StoreDesk
from tests.fixtures.configs import run_keepword
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.postgres import Postgres
from tests.integration.test_ingest import (
    mail,
    mailbox_for,
    now,
    settings_for,
    write_config,
)
from tests.integration.test_triage_batches_postgres import _cases_in_opening_order
from tests.unit.test_triage_batches import START, Delivery, _inbox, _snapshot

pytestmark = pytest.mark.integration

BOB = "bob@example.com"


def _fill(dovecot: Dovecot, user: str, deliveries: list[Delivery], *, late_every: int) -> None:
    """Each folder's mail with its delivery instant as INTERNALDATE, in delivery order but
    for every `late_every`th, appended at the end: old mail found late (a migration, a
    colleague's forward), so UIDs do not follow the dates."""
    with dovecot.client(user) as imap:
        for folder in ("INBOX", "Sent"):
            mine = [(raw, at) for raw, at, into in deliveries if into == folder]
            order = [m for n, m in enumerate(mine) if n % late_every] + mine[::late_every]
            for raw, at in order:
                imap.append(folder, raw, msg_time=at)


def _import(
    tmp: Path,
    dovecot: Dovecot,
    user: str,
    session_for: Any,
    *,
    during: bool,
    database_url: str | None = None,
    snapshot: Callable[[Engine], dict[str, list[tuple[Any, ...]]]] = _snapshot,
) -> _Imported:
    """A fresh store's first import (small batches: many chances to triage meanwhile),
    then triage of whatever is left, as the daemon's poll does; at one instant, so both
    ways write the same timestamps. What triage wrote, and the horizons it was given.
    `database_url`: the store (default: SQLite in `tmp`); `snapshot`: how it is read."""
    imap = dovecot.imap_settings(user, fetch_batch=10)
    tmp.mkdir(exist_ok=True)
    desk = StoreDesk(
        tmp, database_url=database_url, team=[ALICE, BOB], sent_folder="Sent", imap=imap
    )
    at = START + timedelta(days=30)
    horizons: list[datetime | None] = []
    meanwhile: list[int] = []  # triaged while the import still had mail to store

    threads: set[str] = set()  # where triage ran

    def triage(through: datetime | None) -> None:
        horizons.append(through)
        threads.add(threading.current_thread().name)
        more = True
        while more:
            run = triage_pending(desk.desk_at(at), acknowledger=acknowledge_case, through=through)
            if through is not None:
                meanwhile.append(run.triaged)
            more = run.more

    taken: list[int] = []  # facts triage took from those the import put at hand
    take = FactsAtHand.take

    def counting(self: FactsAtHand, pks: Iterable[int]) -> dict[int, Any]:
        held = take(self, pks)
        taken.append(len(held))
        return held

    poller = MailboxPoller(desk.engine, desk.settings, desk.box, session_factory=session_for)
    try:
        with mock.patch.object(FactsAtHand, "take", counting):
            result = poller.poll(lambda: at, triage=triage if during else None)
    finally:
        poller.close()
    assert result.ok and all(polled.is_history for polled in result.folders.values())
    while triage_pending(desk.desk_at(at), acknowledger=acknowledge_case).more:
        pass
    try:
        return _Imported(snapshot(desk.engine), horizons, sum(meanwhile), threads, sum(taken))
    finally:
        desk.engine.dispose()


@dataclass(frozen=True)
class _Imported:
    snapshot: dict[str, list[tuple[Any, ...]]]  # what triage wrote
    horizons: list[datetime | None]  # the instants triage was given, in order
    meanwhile: int  # messages triaged before the import had stored everything
    threads: set[str]  # the names of the threads triage ran in
    taken: int  # messages whose facts triage took from the import (store.facts_at_hand)


@pytest.mark.parametrize("seed", range(3))
def test_triage_during_the_import_decides_what_triage_after_it_decides(
    dovecot: Dovecot, mail_user: str, tmp_path: Path, session_for: Any, seed: int
) -> None:
    user = mail_user
    deliveries, _ = _inbox(seed)
    _fill(dovecot, user, deliveries, late_every=7)
    after = _import(tmp_path / "after", dovecot, user, session_for, during=False).snapshot
    imported = _import(tmp_path / "during", dovecot, user, session_for, during=True)
    during, horizons = imported.snapshot, imported.horizons
    for table, rows in after.items():
        assert during[table] == rows, table
    assert len(after["case"]) >= 10
    # Oldest first, the old mail found late does not hold the rest back: most of the
    # mail is triaged before the import's last batch (in UID order, next to none).
    assert imported.meanwhile >= len(deliveries) // 2
    assert imported.taken >= len(deliveries) // 2  # from the store to triage at hand
    assert all(row["triaged_at"] is not None for row in _messages(during))
    # Each folder's mail is stored oldest first, so its ids follow its dates; and the
    # smaller folder (Sent) is imported first, so triage runs alongside the inbox's.
    ids: dict[str, list[int]] = {}
    for origin in ("inbox", "sent"):
        mine = [row for row in _messages(during) if row["origin"] == origin]
        written = [row["id"] for row in sorted(mine, key=lambda row: _written(row))]
        assert written == sorted(written), origin
        ids[origin] = written
    assert max(ids["sent"]) < min(ids["inbox"])
    # It ran while the import did (and waited for the old mail found late), then took
    # the rest once nothing was left unstored.
    assert [h for h in horizons if h is not None] and horizons[-1] is None
    assert len(horizons) < len(deliveries) // 10 + 4  # at most once a stored batch
    assert imported.threads == {threading.current_thread().name}  # SQLite: one writer


def test_on_postgresql_triage_during_the_import_decides_the_same(
    dovecot: Dovecot, mail_user: str, tmp_path: Path, session_for: Any, postgres: Postgres
) -> None:
    """The horizon is a comparison of timestamps in SQL: PostgreSQL's types, too."""
    deliveries, _ = _inbox(3)
    _fill(dovecot, mail_user, deliveries, late_every=4)
    stores = {}
    for name, during in (("after", False), ("during", True)):
        url = postgres.create_database(f"kw_history_{name}")
        # PostgreSQL takes case ids from its sequence ahead: compared in opening order.
        stores[name] = _import(
            tmp_path / name,
            dovecot,
            mail_user,
            session_for,
            during=during,
            database_url=url,
            snapshot=_cases_in_opening_order,
        )
    for table, rows in stores["after"].snapshot.items():
        assert stores["during"].snapshot[table] == rows, table
    assert len(stores["after"].snapshot["case"]) >= 10
    horizons = stores["during"].horizons
    assert [h for h in horizons if h is not None] and horizons[-1] is None
    # Here triage ran in a thread of its own while the import stored (TriageBehind),
    # and took facts the import put at hand there.
    assert stores["during"].threads == {"kw-history-triage"}
    assert stores["during"].taken > 0 and stores["after"].taken == 0


def test_on_the_corpus_triage_during_the_import_decides_the_same(
    dovecot: Dovecot,
    mail_user: str,
    tmp_path: Path,
    session_for: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = mail_user
    monkeypatch.setattr(ingest, "PARALLEL_PARSE_MIN", 1)  # through the parse workers
    with dovecot.client(user) as imap:
        for start in range(0, len(corpus := corpus_rfc822()), 100):
            imap.multiappend("INBOX", [raw for _, raw in corpus[start : start + 100]])
    after = _import(tmp_path / "after", dovecot, user, session_for, during=False).snapshot
    during = _import(tmp_path / "during", dovecot, user, session_for, during=True)
    for table, rows in after.items():
        assert during.snapshot[table] == rows, table
    assert len(after["case"]) >= 100
    assert during.horizons[-1] is None
    assert during.taken > 100  # most of the corpus went from the store to triage at hand


def _written(row: dict[str, Any]) -> tuple[datetime, int]:
    """When a stored message counts as written (store.triage_state), ties by id."""
    return (row["date"] or row["received_at"] or row["stored_at"], row["id"])


def _messages(snapshot: dict[str, list[tuple[Any, ...]]]) -> list[dict[str, Any]]:
    names = list(message.c.keys())
    return [dict(zip(names, row, strict=True)) for row in snapshot["message"]]


def test_keepword_import_leaves_the_history_in_cases_and_live_mail_to_the_daemon(
    dovecot: Dovecot, mail_user: str, tmp_path: Path
) -> None:
    dovecot.multiappend(mail_user, "INBOX", [mail(n) for n in range(30)])
    dovecot.multiappend(mail_user, "Sent", [mail(n) for n in range(100, 103)])
    config = write_config(dovecot, mail_user, tmp_path, fetch_batch=10)
    done = run_keepword(config, "import", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "support: the history is in 30 new case(s)" in done.stdout
    engine = make_engine(f"sqlite:///{tmp_path / 'state' / 'keepword.db'}")
    assert [row.triaged_at is not None for row in _rows(engine)] == [True] * 33
    # The smaller folder first: triage runs alongside the bigger one's import.
    assert [row.origin for row in _rows(engine)] == ["sent"] * 3 + ["inbox"] * 30
    # The summary lists the folders as configured, not in the order they went in.
    listed = [line.split()[3] for line in done.stdout.splitlines() if "│ support" in line]
    assert listed == ["INBOX", "Sent"], done.stdout

    # Mail that came since is live: the daemon triages and answers it, not the import.
    dovecot.append(mail_user, "INBOX", mail(30))
    again = run_keepword(config, "import", "--quiet")
    assert again.returncode == 0, again.stderr
    assert "support: the history is in 0 new case(s)" in again.stdout
    rows = _rows(engine)
    assert [(row.is_history, row.triaged_at is None) for row in rows[33:]] == [(False, True)]
    engine.dispose()


def _rows(engine: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(message).order_by(message.c.id)))


def test_the_daemons_first_poll_triages_the_history_while_it_takes_it_in(
    dovecot: Dovecot, mail_user: str, tmp_path: Path, session_for: Any
) -> None:
    """The daemon's wiring (runtime.service): its first poll triages during the import,
    so more history than one triage slice is in cases when that poll returns."""
    dovecot.multiappend(mail_user, "INBOX", [mail(n) for n in range(250)])
    box = mailbox_for(dovecot, mail_user, fetch_batch=20)
    engine = open_store(f"sqlite:///{tmp_path / 'keepword.db'}")
    service = Service(
        settings_for(box, engine), clock=now, engine=engine, session_factory=session_for
    )
    horizons: list[datetime | None] = []
    triage = service.triage

    def recording(box: Any, limit: int = 5000, *, through: datetime | None = None) -> Any:
        horizons.append(through)
        return triage(box, limit, through=through)

    service.triage = recording  # type: ignore[method-assign]

    async def first_poll() -> bool:
        try:
            return await service.poll(box)
        finally:
            await service.close()

    more = asyncio.run(first_poll())
    assert not more
    assert len(_rows(engine)) == 250 > TRIAGE_SLICE
    assert all(row.triaged_at is not None for row in _rows(engine))
    assert sum(1 for h in horizons if h is not None) >= 5  # batch by batch, oldest first
    engine.dispose()


def test_a_bug_in_a_folders_plan_leaves_it_in_uid_order_and_triage_after_it(
    dovecot: Dovecot,
    mail_user: str,
    tmp_path: Path,
    session_for: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The oldest-first plan only orders the import: when making it fails for a reason
    of keepword's own, the folder is imported in UID order all the same, and triage
    during the import waits for its mail, so it decides what triage after it decides."""
    deliveries, _ = _inbox(0)
    _fill(dovecot, mail_user, deliveries, late_every=7)
    planned = ingest._Importing.of

    def inbox_fails(cls: type[Any], session: Any, where: Any, *args: Any) -> Any:
        if where.name == "INBOX":
            raise RuntimeError("a bug in the plan")
        return planned(session, where, *args)

    monkeypatch.setattr(ingest._Importing, "of", classmethod(inbox_fails))
    after = _import(tmp_path / "after", dovecot, mail_user, session_for, during=False)
    imported = _import(tmp_path / "during", dovecot, mail_user, session_for, during=True)
    assert imported.snapshot == after.snapshot
    assert "no oldest-first plan; importing in UID order" in caplog.text
    assert all(row["triaged_at"] is not None for row in _messages(imported.snapshot))
    monkeypatch.undo()  # nothing is lost against the plan's order
    planned_import = _import(tmp_path / "planned", dovecot, mail_user, session_for, during=True)
    stored = {(row["message_id"], row["origin"]) for row in _messages(imported.snapshot)}
    assert stored == {
        (row["message_id"], row["origin"]) for row in _messages(planned_import.snapshot)
    }
    assert len(imported.snapshot["case"]) == len(planned_import.snapshot["case"]) >= 10


class _CountedExecutor(ProcessPoolExecutor):
    """The parse workers' executor, counted: one is one set of workers spawned."""

    made = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).made += 1
        super().__init__(*args, **kwargs)


@pytest.mark.parametrize("way", ["keepword import", "the daemon's poll"])
def test_a_first_imports_folders_share_one_set_of_parse_workers(
    dovecot: Dovecot,
    mail_user: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    way: str,
) -> None:
    """Sent, then the inbox: the workers spawned for the first folder (while the plan is
    read) parse the second one's batches too, instead of a second spawn."""
    monkeypatch.setattr(ingest, "PARALLEL_PARSE_MIN", 20)  # the two folders together
    monkeypatch.setattr(parse_workers, "ProcessPoolExecutor", _CountedExecutor)
    monkeypatch.setattr(_CountedExecutor, "made", 0)
    submitted: list[int] = []
    real_submit = parse_workers.ParsePool.submit

    def submit(pool: parse_workers.ParsePool, raws: Any) -> Any:
        future = real_submit(pool, raws)
        submitted.append(len(raws) if future is not None else 0)
        return future

    monkeypatch.setattr(parse_workers.ParsePool, "submit", submit)
    dovecot.multiappend(mail_user, "INBOX", [mail(n) for n in range(15)])
    dovecot.multiappend(mail_user, "Sent", [mail(n) for n in range(100, 110)])
    config = write_config(dovecot, mail_user, tmp_path, fetch_batch=4)
    settings = load_config(config)
    if way == "keepword import":
        assert cli_ingest._import(settings, list(settings.mailbox), quiet=True) == 0
    else:
        engine = open_store(settings.keepword.effective_database_url())
        poller = MailboxPoller(engine, settings, settings.mailbox[0])
        try:
            assert poller.poll(now).ok
        finally:
            poller.close()
    assert _CountedExecutor.made == 1
    # Every batch of both folders went to the workers, though neither folder reaches
    # PARALLEL_PARSE_MIN alone: the plan of the whole first import started them.
    assert sum(submitted) == 25 and 0 not in submitted
