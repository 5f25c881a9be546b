"""The surge bench's body: run it as bench/surge_daemon.py (that file says why)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from bench.latency import history_mail, imported  # noqa: E402
from bench.relay_sink import ProcessSink, sending_limit, start_sink  # noqa: E402
from tests.fixtures.dovecot import load_mailserver  # noqa: E402

from keepword.adapters.credentials import Secret  # noqa: E402
from keepword.adapters.imap import ImapSession  # noqa: E402
from keepword.cli.collector import pace_collector  # noqa: E402
from keepword.config import ImapSettings, Settings  # noqa: E402
from keepword.mail.parse import parse_message  # noqa: E402
from keepword.runtime.daemon import Daemon  # noqa: E402
from keepword.store import outbox  # noqa: E402
from keepword.store.db import open_store  # noqa: E402

DESCRIPTION = "Surge end to end: 2,000 new customer mails at once; the real daemon answers."
SUPPORT = "support@example.com"
ALL_WEEK = {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


def customer_mail(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <c{n}@example.org>"
    msg["To"] = SUPPORT
    msg["Subject"] = f"Order {10000 + n}: the shop is down, I cannot pay"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain="example.org")
    msg.set_content(
        f"Hello,\n\nyour shop shows an error when I pay for order {10000 + n}.\n"
        + "Is it down? I need the order by Friday.\n" * 5
        + "\nThanks\nCustomer"
    )
    return msg.as_bytes()


def history_mails(count: int) -> tuple[list[bytes], list[bytes]]:
    """`count` mails of history: customers' questions, one every 20 minutes back from a
    day ago, and the team's answer to each 17 minutes to 7 hours later."""
    now = datetime.now(UTC)
    asks, answers = [], []
    for j in range(count // 2):
        at = now - timedelta(days=1, minutes=20 * j)
        ask, answer = history_mail(SUPPORT, j, at, timedelta(minutes=17 + 61 * (j % 7)))
        asks.append(ask)
        answers.append(answer)
    return asks, answers


def seed_history(instance: Any, count: int) -> None:
    asks, answers = history_mails(count)
    with ImapSession(imap_settings(instance), Secret(instance.users[SUPPORT])) as session:
        session.ensure_folder("Sent")
        for folder, mails in (("INBOX", asks), ("Sent", answers)):
            for start in range(0, len(mails), 500):
                session.append_many(folder, mails[start : start + 500])


def imap_settings(instance: Any) -> ImapSettings:
    return ImapSettings(
        host=instance.host,
        port=instance.imap_port,
        tls="plain",
        username=SUPPORT,
        password=instance.users[SUPPORT],
    )


def config_for(work: Path, instance: Any, smtp_port: int, database: str | None) -> Path:
    keepword: dict[str, Any] = {
        "state_dir": str(work),
        "allow_inline_passwords": True,
        "log_level": "WARNING",
    }
    if database:
        keepword["database_url"] = database
    settings = Settings.model_validate(
        {
            "keepword": keepword,
            "mailbox": [
                {
                    "name": "support",
                    "address": SUPPORT,
                    "display_name": "Example Support",
                    "team": ["alice@example.com"],
                    "imap": imap_settings(instance).model_dump(mode="json", exclude_none=True),
                    "smtp": {
                        "host": "127.0.0.1",
                        "port": smtp_port,
                        "tls": "plain",
                        "username": SUPPORT,
                        "password": "relay-pw",
                    },
                    "calendar": {"hours": ALL_WEEK},
                }
            ],
        }
    )
    config = work / "keepword.toml"
    config.write_text(tomli_w.dumps(settings.model_dump(mode="json", exclude_none=True)))
    return config


def fetch_and_parse(instance: Any, count: int) -> float:
    settings = imap_settings(instance)
    started = time.monotonic()
    with ImapSession(settings, Secret(instance.users[SUPPORT])) as session:
        uids = sorted(session.new_uids("INBOX", 0))[-count:]  # the surge's, not the history
        fetched = session.fetch(uids)
    parsed = [parse_message(m.raw) for m in fetched]
    assert len(parsed) >= count, (len(parsed), count)
    return time.monotonic() - started


class _ThreadSink:
    """The sink as a thread of this process (the bench's first form, for comparison)."""

    def __init__(self, port: int) -> None:
        self.sink, self.controller = start_sink(port)
        self.looked = 0  # each record is read once: the check shares the daemon's GIL

    @property
    def accepted(self) -> list[tuple[float, tuple[str, ...]]]:
        return self.sink.accepted

    def fresh(self) -> list[tuple[float, tuple[str, ...]]]:
        new = self.sink.accepted[self.looked :]
        self.looked += len(new)
        return new

    def stop(self) -> None:
        self.controller.stop()


def copies_made(database_url: str, deadline: float) -> float:
    """When no acknowledgement waits for its copy in Sent any more (a surge's drains
    leave them to the drain after it)."""
    engine = open_store(database_url)
    try:
        while True:
            with engine.connect() as conn:
                if outbox.missing_sent_copies(conn, "support") == 0:
                    return time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError("Sent copies still missing after 120 s")
            time.sleep(0.02)
    finally:
        engine.dispose()


async def surge(
    work: Path, instance: Any, count: int, database: str | None, history: int, sink_in: str
) -> dict[str, float]:
    port = load_mailserver().free_port()
    sink = ProcessSink(port, work / "sink.log") if sink_in == "process" else _ThreadSink(port)
    try:
        raws = [customer_mail(n) for n in range(count)]
        daemon = Daemon(config_for(work, instance, port, database))
        running = asyncio.create_task(daemon.run())
        figures: dict[str, float] = {}
        try:
            await asyncio.sleep(3.0)  # first poll of the empty inbox done, watcher in IDLE
            if history:
                database_url = database or f"sqlite:///{work / 'keepword.db'}"  # the state dir's
                folders = ("INBOX", "Sent")
                began = time.monotonic()
                while not await asyncio.to_thread(imported, database_url, ["support"], folders):
                    await asyncio.sleep(1.0)
                figures["history"] = time.monotonic() - began + 3.0
                await asyncio.sleep(3.0)  # the watchers back in IDLE
            print("the surge begins", file=sys.stderr, flush=True)  # for a profiler to attach
            with ImapSession(imap_settings(instance), Secret(instance.users[SUPPORT])) as session:
                started = time.monotonic()
                await asyncio.to_thread(session.append_many, "INBOX", raws, ())
                landed = time.monotonic()
            customers = {f"c{n}@example.org" for n in range(count)}
            deadline = landed + 600
            answered: set[str] = set()
            while True:
                fresh = sink.fresh()
                answered.update(r for _, rcpts in fresh for r in rcpts if r in customers)
                if len(answered) == count:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(answered)} of {count} acknowledged in 600 s")
                await asyncio.sleep(0.01)
            sink.fresh()  # what else came before the last acknowledgement
            times = [t for t, rcpts in sink.accepted if set(rcpts) & customers]
            database_url = database or f"sqlite:///{work / 'keepword.db'}"
            copied = await asyncio.to_thread(copies_made, database_url, landed + 120)
            figures |= {
                "copies": copied - landed,
                "append": landed - started,
                "first": min(times) - landed,
                "last": max(times) - landed,
                "median": statistics.median(times) - landed,
                "other_mail": float(len(sink.accepted) - len(times)),
            }
        finally:
            daemon.request_stop()
            await running
        figures["fetch_parse"] = await asyncio.to_thread(fetch_and_parse, instance, count)
        sample = raws[0]  # an acknowledgement is about the size of a customer mail
        figures["send"] = await sending_limit(port, [sample] * count, "limit{}@example.org".format)
    finally:
        sink.stop()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--database", default=None, help="database_url (default: SQLite)")
    parser.add_argument("--history", type=int, default=0, help="history mails (half in Sent)")
    parser.add_argument(
        "--sink",
        choices=("process", "thread"),
        default="process",
        help="the relay sink in a process of its own (as a real relay) or a thread of the bench",
    )
    args = parser.parse_args()
    pace_collector()  # as `keepword run` does (keepword.cli.main)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    mailserver = load_mailserver()
    mailserver.install()
    work = Path(tempfile.mkdtemp(prefix="kw-sd-", dir="/tmp"))
    work.chmod(0o755)  # Dovecot's mail processes must traverse it
    instance = mailserver.start(work / "dc", users={SUPPORT: "support-pw"})
    try:
        if args.history:
            seed_history(instance, args.history)
        f = asyncio.run(surge(work, instance, args.count, args.database, args.history, args.sink))
    finally:
        mailserver.stop(work / "dc")
        shutil.rmtree(work, ignore_errors=True)
    limit = f["fetch_parse"] + f["send"]
    if args.history:
        print(f"{args.history} history mails imported and triaged in {f['history']:.0f} s")
    print(f"{args.count} customer mails appended in {f['append']:.2f} s (MULTIAPPEND)")
    print("| mails | first ack | last ack | limit: fetch+parse + send | last / limit |")
    print("|---:|---:|---:|---:|---:|")
    print(
        f"| {args.count} | {f['first']:.2f} s | {f['last']:.2f} s "
        f"| {limit:.2f} s ({f['fetch_parse']:.2f} + {f['send']:.2f}) | {f['last'] / limit:.2f} |"
    )
    print(f"median acknowledgement (the middle customer's wait): {f['median']:.2f} s")
    print(f"every acknowledgement's copy in Sent after {f['copies']:.2f} s")
    print(f"other mail accepted meanwhile (team, lead): {int(f['other_mail'])}")
    return 0
