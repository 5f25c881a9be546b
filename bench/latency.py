"""Arrival -> acknowledgement latency of the running daemon, with and without IMAP IDLE.

    .venv/bin/python bench/latency.py [--count 40] [--poll-interval 10] [--mode idle|poll|both]
                                      [--mailboxes 1] [--history 0]

Starts a private Dovecot (scripts/mailserver) and an aiosmtpd server that relays over
LMTP into it (tests/fixtures/smtp.py), writes a config file and runs the real daemon
(keepword.runtime.daemon.Daemon with keepword.runtime.service.Service) in this process.
Then it delivers
`count` customer mails one at a time over LMTP into the shared inbox and times each from
the end of the LMTP delivery to the moment the SMTP server has accepted (and relayed)
the acknowledgement. Each delivery waits a random 0..poll_interval seconds first, so
arrivals fall at random points of the poll cycle. Without IDLE the expected wait is about
half the poll interval; with IDLE it is Dovecot's notify delay plus one poll + drain.

`--mailboxes N --history H`: N shared mailboxes (support, support1, ...), each seeded
before the daemon starts with H history mails by MULTIAPPEND (three quarters customer
mail in the inbox, a quarter team replies in Sent, ~1 KB each), and a Sent folder the
daemon polls and files its acknowledgements' copies in. The daemon imports and triages
every history first (timed); then each of the `count` mails goes to a random mailbox.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.fixtures.dovecot import load_mailserver  # noqa: E402
from tests.fixtures.smtp import SmtpServer  # noqa: E402

from keepword.adapters.credentials import Secret  # noqa: E402
from keepword.cli.collector import pace_collector  # noqa: E402
from keepword.config import ImapSettings, KeepwordSettings, MailboxSettings, Settings  # noqa: E402
from keepword.runtime.daemon import Daemon  # noqa: E402
from keepword.store.db import open_store  # noqa: E402
from keepword.store.messages import get_cursor  # noqa: E402
from keepword.store.triage_state import triage_backlog  # noqa: E402

SUPPORT = "support@example.com"
ALL_WEEK = {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


def customer_mail(n: int, customer: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <{customer}>"
    msg["To"] = SUPPORT
    msg["Subject"] = f"Order {1000 + n} has not arrived"
    msg["Message-ID"] = make_msgid(domain="example.org")
    msg.set_content(f"Hello,\n\nmy order {1000 + n} is a week late. Can you help?\n\nThanks")
    return msg.as_bytes()


def address_of(i: int) -> str:
    return SUPPORT if i == 0 else f"support{i}@example.com"


def history_mail(
    box: str, j: int, at: datetime | None = None, answered_after: timedelta | None = None
) -> tuple[bytes, bytes]:
    """A customer's old mail (at `at`: by default one every 13 minutes back from
    1 November 2026) and the team's reply to it `answered_after` later (for Sent)."""
    at = at or datetime(2026, 11, 1, 9, 0, tzinfo=UTC) - timedelta(minutes=13 * j)
    ask = EmailMessage()
    ask["From"] = f"Old customer {j} <old{j % 997}@example.net>"
    ask["To"] = box
    ask["Subject"] = f"Order {j} question"
    ask["Date"] = format_datetime(at)
    ask["Message-ID"] = f"<h{j}-{box}>"
    ask.set_content(f"Hello,\n\nwhere is order {j}?\n" + "Some more words here. " * 20)
    reply = EmailMessage()
    reply["From"] = box
    reply["To"] = f"old{j % 997}@example.net"
    reply["Subject"] = f"Re: Order {j} question"
    reply["Date"] = format_datetime(at + (answered_after or timedelta(minutes=47)))
    reply["Message-ID"] = f"<r{j}-{box}>"
    reply["In-Reply-To"] = f"<h{j}-{box}>"
    reply.set_content("It is on its way.\n" + "Some more words here. " * 10)
    return ask.as_bytes(), reply.as_bytes()


def seed_history(instance: Any, mailboxes: int, history: int) -> float:
    """`history` mails per mailbox: 3/4 in the inbox, 1/4 replies in Sent (MULTIAPPEND)."""
    from keepword.adapters.imap import ImapSession

    def one(i: int) -> None:
        box = address_of(i)
        settings = ImapSettings(
            host=instance.host,
            port=instance.imap_port,
            tls="plain",
            username=box,
            password=instance.users[box],
        )
        asks, replies = [], []
        for j in range(history * 3 // 4):
            ask, reply = history_mail(box, j)
            asks.append(ask)
            if len(replies) < history - history * 3 // 4:
                replies.append(reply)
        with ImapSession(settings, Secret(instance.users[box])) as session:
            session.ensure_folder("Sent")
            for start in range(0, len(asks), 500):
                session.append_many("INBOX", asks[start : start + 500])
            for start in range(0, len(replies), 500):
                session.append_many("Sent", replies[start : start + 500])

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(mailboxes)))
    return time.monotonic() - started


def imported(database_url: str, names: list[str], folders: tuple[str, ...]) -> bool:
    engine = open_store(database_url)
    try:
        with engine.connect() as conn:
            for name in names:
                for folder in folders:
                    cursor = get_cursor(conn, name, folder)
                    if cursor is None or not cursor.history_done:
                        return False
                if triage_backlog(conn, name).pending:
                    return False
        return True
    finally:
        engine.dispose()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


async def measure(
    mailserver: Any,
    instance: Any,
    work: Path,
    *,
    idle: bool,
    count: int,
    interval: int,
    mailboxes: int = 1,
    history: int = 0,
) -> list[float]:
    smtp = SmtpServer(lmtp=(instance.host, instance.lmtp_port))
    smtp.start()
    state = work / ("idle" if idle else "poll")
    state.mkdir()
    boxes = []
    for i in range(mailboxes):
        address = address_of(i)
        imap = {
            "host": instance.host,
            "port": instance.imap_port,
            "tls": "plain",
            "username": address,
            "password": instance.users[address],
            "idle": idle,
        }
        boxes.append(
            MailboxSettings(
                name="support" if i == 0 else f"support{i}",
                address=address,
                display_name="Example Support",
                poll_interval=interval,
                sent_folder="Sent" if history else None,
                imap=imap,
                smtp=smtp.settings(),
                calendar={"hours": ALL_WEEK},
                limits={"per_sender_per_hour": 1000, "per_sender_per_day": 1000},
            )
        )
    settings = Settings(
        keepword=KeepwordSettings(
            state_dir=state, allow_inline_passwords=True, log_level="WARNING"
        ),
        mailbox=boxes,
    )
    config = state / "keepword.toml"
    config.write_text(tomli_w.dumps(settings.model_dump(mode="json", exclude_none=True)))
    daemon = Daemon(config)  # keepword.runtime.service.make_worker on the system clock
    running = asyncio.create_task(daemon.run())
    latencies: list[float] = []
    try:
        await asyncio.sleep(2.0)  # first poll done, watcher in IDLE
        if history:
            started = time.monotonic()
            url = settings.keepword.effective_database_url()
            names = [b.name for b in boxes]
            while not await asyncio.to_thread(imported, url, names, ("INBOX", "Sent")):
                await asyncio.sleep(1.0)
            print(
                f"  {mailboxes} x {history} history imported and triaged "
                f"{time.monotonic() - started + 2.0:.0f} s after start",
                flush=True,
            )
            await asyncio.sleep(2.0)  # every watcher back in IDLE
        for n in range(count):
            await asyncio.sleep(random.uniform(0, interval))
            customer = f"cust{n}@example.org"
            before = len(smtp.messages)
            raw = customer_mail(n, customer)
            to = address_of(random.randrange(mailboxes))
            await asyncio.to_thread(deliver, instance, customer, raw, to)
            arrived = time.monotonic()
            while not any(customer in m.rcpt_tos for m in smtp.messages[before:]):
                if time.monotonic() - arrived > interval * 3 + 30:
                    raise RuntimeError(f"no acknowledgement for mail {n}")
                await asyncio.sleep(0.005)
            latencies.append(time.monotonic() - arrived)
            print(f"  {'idle' if idle else 'poll'} #{n + 1}: {latencies[-1]:.3f} s", flush=True)
    finally:
        daemon.request_stop()
        await running
        smtp.stop()
    return latencies


def deliver(instance: Any, sender: str, raw: bytes, to: str = SUPPORT) -> None:
    import smtplib

    with smtplib.LMTP(instance.host, instance.lmtp_port) as lmtp:
        refused = lmtp.sendmail(sender, [to], raw)
    assert not refused, refused


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--poll-interval", type=int, default=10)
    parser.add_argument("--mode", choices=("idle", "poll", "both"), default="both")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--mailboxes", type=int, default=1)
    parser.add_argument("--history", type=int, default=0, help="history mails per mailbox")
    args = parser.parse_args()
    pace_collector()  # as `keepword run` does (keepword.cli.main)
    random.seed(args.seed)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd's deprecation notes
    mailserver = load_mailserver()
    mailserver.install()
    work = Path(tempfile.mkdtemp(prefix="kw-lat-", dir="/tmp"))
    work.chmod(0o755)  # Dovecot's mail processes must traverse it
    users = {address_of(i): "support-pw" for i in range(args.mailboxes)}
    users |= {f"cust{n}@example.org": "pw" for n in range(args.count)}
    instance = mailserver.start(work / "dc", users=users)
    if args.history:
        seconds = seed_history(instance, args.mailboxes, args.history)
        print(f"seeded {args.mailboxes} x {args.history} history mails in {seconds:.0f} s")
    results: dict[str, list[float]] = {}
    try:
        for mode in ("idle", "poll") if args.mode == "both" else (args.mode,):
            results[mode] = asyncio.run(
                measure(
                    mailserver,
                    instance,
                    work,
                    idle=mode == "idle",
                    count=args.count,
                    interval=args.poll_interval,
                    mailboxes=args.mailboxes,
                    history=args.history,
                )
            )
    finally:
        mailserver.stop(work / "dc")
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n{args.count} mails, poll interval {args.poll_interval} s, "
        f"{args.mailboxes} mailbox(es) with {args.history} history mails each"
    )
    print("| mode | mails | p50 | p95 | max | mean |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, values in results.items():
        print(
            f"| {'IDLE + poll' if mode == 'idle' else 'poll only'} | {len(values)} "
            f"| {percentile(values, 0.5):.2f} s | {percentile(values, 0.95):.2f} s "
            f"| {max(values):.2f} s | {statistics.fmean(values):.2f} s |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
