"""Idle cost of the IMAP IDLE watchers: IMAP commands a minute and CPU per idle mailbox.

Starts a private Dovecot and N watchers (keepword.adapters.idle.watch_mailbox, each on
its own connection, as the daemon runs them); once all are in IDLE, counts the IMAP
commands they send (tags) and this process's CPU time over a quiet window.
The periodic poll (one STATUS per folder every poll_interval) is not included.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.fixtures.dovecot import load_mailserver  # noqa: E402

from keepword.adapters.credentials import resolve_secret  # noqa: E402
from keepword.adapters.idle import watch_mailbox  # noqa: E402
from keepword.adapters.imap import ImapSession  # noqa: E402
from keepword.config import MailboxSettings  # noqa: E402


async def measure(instance: Any, user: str, mailboxes: int, window: float) -> tuple[float, float]:
    sessions: list[ImapSession] = []

    def factory(box: MailboxSettings) -> ImapSession:
        session = ImapSession(box.imap, resolve_secret(box.imap))
        sessions.append(session)
        return session

    async def nothing() -> None:
        return None

    stop = asyncio.Event()
    boxes = [
        MailboxSettings(
            name=f"box{n}",
            address=user,
            imap={
                "host": instance.host,
                "port": instance.imap_port,
                "tls": "plain",
                "username": user,
                "password": instance.users[user],
            },
        )
        for n in range(mailboxes)
    ]
    tasks = [
        asyncio.create_task(watch_mailbox(b, nothing, stop=stop, session_factory=factory))
        for b in boxes
    ]
    while len(sessions) < mailboxes or any(s.commands < 4 for s in sessions):
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # past EXAMINE, into IDLE
    before, cpu = sum(s.commands for s in sessions), time.process_time()
    await asyncio.sleep(window)
    commands = sum(s.commands for s in sessions) - before
    cpu = time.process_time() - cpu
    stop.set()
    await asyncio.gather(*tasks)
    per_minute = commands / mailboxes * 60 / window
    return per_minute, cpu / window * 60 / mailboxes * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mailboxes", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    mailserver = load_mailserver()
    mailserver.install()
    work = Path(tempfile.mkdtemp(prefix="kw-idle-", dir="/tmp"))
    work.chmod(0o755)
    user = "support@example.com"
    instance = mailserver.start(work / "dc", users={user: "support-pw"})
    print("| idle mailboxes | IMAP commands / min / mailbox | CPU ms / min / mailbox |")
    print("|---:|---:|---:|")
    try:
        for count in args.mailboxes:
            per_minute, cpu = asyncio.run(measure(instance, user, count, args.window))
            print(f"| {count} | {per_minute:.1f} | {cpu:.2f} |", flush=True)
    finally:
        mailserver.stop(work / "dc")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
