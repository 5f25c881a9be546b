"""Triage throughput through the real store: is threading linear in stored messages?

    .venv/bin/python bench/triage.py [--messages 20000]

bench/thread_cases.py measures the pure threading code with dict lookups; this one runs
the production path: messages parsed and stored in SQLite (store_batch, as ingestion
does), then `triage_pending` (classification, candidate queries against the indexed
tables, case updates, timeline rows; one transaction per message). It stores the same
generated mail as bench/import.py, as history so that no acknowledgement is composed,
and compares N/2 with N messages in the same run, each in a fresh database.
`--postgres` runs the same on a throw-away PostgreSQL (scripts/pgserver) instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from keepword.config import KeepwordSettings, MailboxSettings, Settings  # noqa: E402
from keepword.domain.model import Origin  # noqa: E402
from keepword.mail.parse import parse_message  # noqa: E402
from keepword.mail.render import Renderer  # noqa: E402
from keepword.pipeline.context import MailboxContext  # noqa: E402
from keepword.pipeline.triage import BATCH as TRIAGE_BATCH  # noqa: E402
from keepword.pipeline.triage import triage_pending  # noqa: E402
from keepword.store.db import open_store  # noqa: E402
from keepword.store.messages import Folder, StoreItem, store_batch  # noqa: E402

BATCH = 500


def load_import_bench() -> ModuleType:
    """bench/import.py holds the mail generator (its name is a keyword: load by path)."""
    spec = importlib.util.spec_from_file_location("kw_import_bench", ROOT / "bench" / "import.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings_for(url: str, work: Path, **mailbox: object) -> tuple[Settings, MailboxSettings]:
    """One mailbox on `url` (`mailbox`: more of its settings, e.g. limits)."""
    box = MailboxSettings.model_validate(
        {
            **mailbox,
            "name": "support",
            "address": "support@shop.example",
            "team": ["alice@shop.example"],
            "imap": {"host": "127.0.0.1", "tls": "plain", "username": "u", "password_env": "X"},
        }
    )
    settings = Settings(keepword=KeepwordSettings(database_url=url, state_dir=work), mailbox=[box])
    return settings, box


def run(
    messages: list[bytes], work: Path, url: str, batch: int = TRIAGE_BATCH
) -> tuple[float, float, int]:
    """(store seconds, triage seconds, cases opened) for these messages in a fresh DB,
    triaged `batch` messages a transaction."""
    engine = open_store(url)
    settings, box = settings_for(url, work)
    now = datetime.now(UTC)
    inbox = Folder(box.name, "INBOX", Origin.INBOX, 1)
    started = time.perf_counter()
    for first in range(0, len(messages), BATCH):
        chunk = messages[first : first + BATCH]
        items = [
            StoreItem(uid=first + i + 1, raw=raw, parsed=parse_message(raw))
            for i, raw in enumerate(chunk)
        ]
        with engine.begin() as conn:
            store_batch(conn, inbox, items, is_history=True, now=now)
    stored = time.perf_counter() - started
    desk = MailboxContext(settings, box, engine, Renderer.for_mailbox(settings, box), now)
    started = time.perf_counter()
    opened = 0
    while True:
        result = triage_pending(desk, limit=BATCH * 4, batch=batch)
        opened += result.opened
        if result.triaged == 0:
            break
    triaged = time.perf_counter() - started
    engine.dispose()
    return stored, triaged, opened


@contextlib.contextmanager
def databases(work: Path, postgres: bool) -> Iterator[Callable[[int], str]]:
    """A fresh database URL per run: SQLite files in `work`, or a private PostgreSQL."""
    if not postgres:
        yield lambda n: f"sqlite:///{work / f'triage-{n}.db'}"
        return
    import psycopg
    from tests.fixtures.scripts import load_script

    pgserver = load_script("pgserver")
    # Its own top-level directory: the server's OS user must reach it (see the fixture).
    directory = Path(tempfile.mkdtemp(prefix="kwpg-", dir="/tmp"))
    server = pgserver.start(directory)
    try:

        def create(n: int) -> str:
            with psycopg.connect(
                host=server.host, port=server.port, user=server.user, dbname="postgres"
            ) as admin:
                admin.autocommit = True
                admin.execute(f"CREATE DATABASE triage_{n}")
            return str(server.url(f"triage_{n}"))

        yield create
    finally:
        pgserver.stop(directory)
        shutil.rmtree(directory, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--postgres", action="store_true", help="a private PostgreSQL")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="--messages one transaction a message and in batches, on SQLite and (with"
        " --postgres) on PostgreSQL, in the same run",
    )
    args = parser.parse_args()
    generate = load_import_bench().generate
    full = list(generate(args.messages))
    if args.compare:
        return compare(full, args.postgres)
    half = full[: args.messages // 2]
    with (
        tempfile.TemporaryDirectory(prefix="kw-triage-") as tmp,
        databases(Path(tmp), args.postgres) as url_for,
    ):
        work = Path(tmp)
        _, t_half, c_half = run(half, work, url_for(len(half)))
        _, t_full, c_full = run(full, work, url_for(len(full)))
    print("PostgreSQL" if args.postgres else "SQLite")
    for count, seconds, cases in ((len(half), t_half, c_half), (len(full), t_full, c_full)):
        rate = count / seconds
        print(f"{count:>6} messages: triage {seconds:6.1f} s, {rate:7.0f} msgs/s, {cases} cases")
    print(f"time({len(full)}) / time({len(half)}) = {t_full / t_half:.2f} (linear: 2.00)")
    return 0


def compare(messages: list[bytes], postgres: bool) -> int:
    """Messages a transaction: 1 (before) against the shipped batch, per database."""
    rates: dict[tuple[str, int], float] = {}
    cases: set[int] = set()
    backends = [False, True] if postgres else [False]
    with tempfile.TemporaryDirectory(prefix="kw-triage-") as tmp:
        for on_postgres in backends:
            name = "PostgreSQL" if on_postgres else "SQLite"
            with databases(Path(tmp), on_postgres) as url_for:
                for n, batch in enumerate((1, TRIAGE_BATCH)):
                    _, seconds, opened = run(messages, Path(tmp), url_for(n), batch)
                    rates[name, batch] = len(messages) / seconds
                    cases.add(opened)
                    print(
                        f"{name:<10} batch {batch:>3}: {seconds:6.1f} s, "
                        f"{rates[name, batch]:6.0f} msgs/s, {opened} cases",
                        flush=True,
                    )
    print(f"same cases opened in every run: {len(cases) == 1}")
    for name in sorted({name for name, _ in rates}):
        gain = rates[name, TRIAGE_BATCH] / rates[name, 1]
        print(f"{name}: batches {gain:.2f}x the speed of a transaction a message")
    if postgres:
        slower = rates["SQLite", TRIAGE_BATCH] / rates["PostgreSQL", TRIAGE_BATCH]
        print(f"PostgreSQL in batches takes {slower:.2f}x SQLite's time (target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
