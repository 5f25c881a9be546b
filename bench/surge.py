"""Surge, sending half: 2,000 acknowledgements in the outbox, drained to a relay + Sent.

Starts a private Dovecot (Sent copies) and an aiosmtpd sink. Prints when the relay
accepted the first and the last acknowledgement of one `drain_outbox` (smtp.connections
as given, copies by MULTIAPPEND), against the same run's limit: the same mails sent
with aiosmtplib on one reused connection plus one MULTIAPPEND of their copies.
The triage half of the surge (stored -> acknowledgement queued) is not measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from bench.relay_sink import sending_limit, start_sink  # noqa: E402
from tests.fixtures.dovecot import load_mailserver  # noqa: E402

from keepword.adapters.credentials import Secret  # noqa: E402
from keepword.adapters.imap import ImapSession  # noqa: E402
from keepword.config import Settings  # noqa: E402
from keepword.domain.model import OutboxKind  # noqa: E402
from keepword.pipeline.send import ImapSentCopy, Servers, drain_outbox  # noqa: E402
from keepword.store import outbox  # noqa: E402
from keepword.store.db import open_store  # noqa: E402

SUPPORT = "support@example.com"


def ack(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = SUPPORT
    msg["To"] = f"c{n}@example.org"
    msg["Subject"] = f"[KW-{n}] Re: Order {n} has not arrived"
    msg["Message-ID"] = make_msgid(domain="example.com")
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content("This is an automatic reply.\n" + "We have your message. " * 40)
    return msg.as_bytes()


def settings_for(work: Path, instance: Any, port: int, connections: int) -> Settings:
    return Settings.model_validate(
        {
            "keepword": {"allow_inline_passwords": True, "state_dir": str(work)},
            "mailbox": [
                {
                    "name": "support",
                    "address": SUPPORT,
                    "sent_folder": "Sent",
                    "imap": {
                        "host": instance.host,
                        "port": instance.imap_port,
                        "tls": "plain",
                        "username": SUPPORT,
                        "password": instance.users[SUPPORT],
                    },
                    "smtp": {
                        "host": "127.0.0.1",
                        "port": port,
                        "tls": "plain",
                        "username": SUPPORT,
                        "password": "relay-pw",
                        "connections": connections,
                    },
                }
            ],
        }
    )


async def limit(raws: list[bytes], port: int, instance: Any) -> float:
    """Sending over one connection plus one MULTIAPPEND of the Sent copies."""
    started = time.monotonic()
    await sending_limit(port, raws)
    imap = settings_for(Path("/tmp"), instance, port, 1).mailbox[0].imap
    with ImapSession(imap, Secret(instance.users[SUPPORT])) as session:
        session.append_many("Sent", raws)
    return time.monotonic() - started


async def run(count: int, connections: int, work: Path, instance: Any) -> None:
    port = load_mailserver().free_port()
    sink, controller = start_sink(port)
    try:
        raws = [ack(n) for n in range(count)]
        floor = await limit(raws, port, instance)
        sink.accepted.clear()
        settings = settings_for(work, instance, port, connections)
        box = settings.mailbox[0]
        engine = open_store(f"sqlite:///{work / f'kw-{connections}.db'}")
        now = datetime.now(UTC)
        with engine.begin() as conn:
            for n, raw in enumerate(raws):
                entry = outbox.OutboxEntry(
                    "support", None, OutboxKind.ACKNOWLEDGEMENT.value, f"ack:{n}",
                    [f"c{n}@example.org"], "s", raw,
                )  # fmt: skip
                outbox.enqueue(conn, entry, now)
        copy = ImapSentCopy(box.imap, "Sent", Secret(instance.users[SUPPORT]))
        started = time.monotonic()
        result = await drain_outbox(engine, settings, box, datetime.now(UTC), Servers(copy))
        done = time.monotonic() - started
        copy.close()
        first, last = sink.times()[0] - started, sink.times()[-1] - started
        print(
            f"| {count} | {connections} | {result.sent} | {first:.3f} s | {last:.2f} s "
            f"| {done:.2f} s | {floor:.2f} s | {done / floor:.2f} |",
            flush=True,
        )
    finally:
        controller.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    mailserver = load_mailserver()
    mailserver.install()
    work = Path(tempfile.mkdtemp(prefix="kw-surge-", dir="/tmp"))
    work.chmod(0o755)
    instance = mailserver.start(work / "dc", users={SUPPORT: "support-pw"})
    print("| acks | smtp.connections | sent | first accepted | last accepted | drain "
          "(with Sent copies) | limit: send + MULTIAPPEND | ratio |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for connections in args.connections:
            asyncio.run(run(args.count, connections, work, instance))
    finally:
        mailserver.stop(work / "dc")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
