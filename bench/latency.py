"""Arrival -> acknowledgement latency of the running daemon, with and without IMAP IDLE.

    .venv/bin/python bench/latency.py [--count 40] [--poll-interval 10] [--mode idle|poll|both]

Starts a private Dovecot (scripts/mailserver) and an aiosmtpd server that relays over
LMTP into it (tests/fixtures/smtp.py), writes a config file and runs the real daemon
(keepword.daemon.Daemon with keepword.service.Service) in this process. Then it delivers
`count` customer mails one at a time over LMTP into the shared inbox and times each from
the end of the LMTP delivery to the moment the SMTP server has accepted (and relayed)
the acknowledgement. Each delivery waits a random 0..poll_interval seconds first, so
arrivals fall at random points of the poll cycle. Without IDLE the expected wait is about
half the poll interval; with IDLE it is Dovecot's notify delay plus one poll + drain.
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
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.fixtures.dovecot import load_mailserver  # noqa: E402
from tests.fixtures.smtp import SmtpServer  # noqa: E402

from keepword.config import KeepwordSettings, MailboxSettings, Settings  # noqa: E402
from keepword.daemon import Daemon  # noqa: E402

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


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


async def measure(
    mailserver: Any, instance: Any, work: Path, *, idle: bool, count: int, interval: int
) -> list[float]:
    smtp = SmtpServer(lmtp=(instance.host, instance.lmtp_port))
    smtp.start()
    state = work / ("idle" if idle else "poll")
    state.mkdir()
    imap = {
        "host": instance.host,
        "port": instance.imap_port,
        "tls": "plain",
        "username": SUPPORT,
        "password": instance.users[SUPPORT],
        "idle": idle,
    }
    box = MailboxSettings(
        name="support",
        address=SUPPORT,
        display_name="Example Support",
        poll_interval=interval,
        sent_folder=None,
        imap=imap,
        smtp=smtp.settings(),
        calendar={"hours": ALL_WEEK},
        limits={"per_sender_per_hour": 1000, "per_sender_per_day": 1000},
    )
    settings = Settings(
        keepword=KeepwordSettings(
            state_dir=state, allow_inline_passwords=True, log_level="WARNING"
        ),
        mailbox=[box],
    )
    config = state / "keepword.toml"
    config.write_text(tomli_w.dumps(settings.model_dump(mode="json", exclude_none=True)))
    daemon = Daemon(config)  # keepword.service.make_worker on the system clock
    running = asyncio.create_task(daemon.run())
    latencies: list[float] = []
    try:
        await asyncio.sleep(2.0)  # first poll done, watcher in IDLE
        for n in range(count):
            await asyncio.sleep(random.uniform(0, interval))
            customer = f"cust{n}@example.org"
            before = len(smtp.messages)
            raw = customer_mail(n, customer)
            await asyncio.to_thread(deliver, instance, customer, raw)
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


def deliver(instance: Any, sender: str, raw: bytes) -> None:
    import smtplib

    with smtplib.LMTP(instance.host, instance.lmtp_port) as lmtp:
        refused = lmtp.sendmail(sender, [SUPPORT], raw)
    assert not refused, refused


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--poll-interval", type=int, default=10)
    parser.add_argument("--mode", choices=("idle", "poll", "both"), default="both")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    random.seed(args.seed)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd's deprecation notes
    mailserver = load_mailserver()
    mailserver.install()
    work = Path(tempfile.mkdtemp(prefix="kw-lat-", dir="/tmp"))
    work.chmod(0o755)  # Dovecot's mail processes must traverse it
    users = {SUPPORT: "support-pw"} | {f"cust{n}@example.org": "pw" for n in range(args.count)}
    instance = mailserver.start(work / "dc", users=users)
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
                )
            )
    finally:
        mailserver.stop(work / "dc")
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.count} mails, poll interval {args.poll_interval} s")
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
