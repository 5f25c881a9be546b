"""Acknowledging a surge against a long history: the per-mail cost of the promise.

    .venv/bin/python bench/surge_triage.py [--history-cases 5200] [--surge 300]

A mailbox with `--history-cases` customer cases over 180 days (about what a 20k-message
history holds: ~5,200 cases), then `--surge` new customers writing within minutes,
triaged and acknowledged in one pass (`triage_pending` with `acknowledge_case`, the
production path on SQLite). Run twice on copies of the same store:

* per mail: the predictor built from the store for every promise (the code before
  issue 14: `mailbox_predictor(..., exclude_case=case)` per acknowledged mail);
* per pass: `MailboxContext.honest_window` - built once, fed the pass's cases.

Both must promise the same (checked: same due times in the same order).

`--limits`: instead, compare the rate limits' lookup (issue 14, item 1) with the
predictor per pass in both: the automatic mail the limits count read from the store for
every mail (`outbox.automatic_mail_times`, the code before) against once a run
(`MailboxContext.planned_mail`); same slots checked (`next_attempt_at` of every row).
`--global-per-hour` sets the mailbox's global limit (default: the shipped one).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from sqlalchemy import Connection, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from bench import triage as triage_bench  # noqa: E402

from keepword.config import MailboxSettings, Settings  # noqa: E402
from keepword.domain.cases import CaseState  # noqa: E402
from keepword.domain.limits import DAY, PlannedMail  # noqa: E402
from keepword.domain.model import CaseStatus, Origin  # noqa: E402
from keepword.domain.windows import Window  # noqa: E402
from keepword.mail.parse import parse_message  # noqa: E402
from keepword.mail.render import Renderer  # noqa: E402
from keepword.pipeline.acknowledge import acknowledge_case  # noqa: E402
from keepword.pipeline.context import CUSTOMER_FACING, MailboxContext  # noqa: E402
from keepword.pipeline.promising import mailbox_predictor  # noqa: E402
from keepword.pipeline.triage import triage_pending  # noqa: E402
from keepword.store import cases as case_store  # noqa: E402
from keepword.store import outbox as outbox_store  # noqa: E402
from keepword.store.db import open_store  # noqa: E402
from keepword.store.messages import Folder, StoreItem, store_batch  # noqa: E402
from keepword.store.tables import outbox, promise  # noqa: E402

NOW = datetime(2026, 3, 4, 11, 0, tzinfo=UTC)  # a Wednesday morning


class PerMailDesk(MailboxContext):
    """The old path: the predictor rebuilt from the store for every promise."""

    def honest_window(self, conn: Connection, *, exclude_case: int | None = None) -> Window:
        predictor = mailbox_predictor(
            conn, self.box, self.calendar, self.now, exclude_case=exclude_case
        )
        return predictor.window(self.now)


class LimitsPerMailDesk(MailboxContext):
    """The old limits lookup: every automatic mail of the last day read per mail."""

    def planned_mail(self, conn: Connection, recipient: str | None) -> PlannedMail:
        to_address, from_mailbox = outbox_store.automatic_mail_times(
            conn, self.box.name, recipient, CUSTOMER_FACING, since=self.now - DAY
        )
        return PlannedMail(tuple(to_address), tuple(from_mailbox))


GLOBAL_PER_HOUR: int | None = None


def settings_for(url: str, work: Path) -> tuple[Settings, MailboxSettings]:
    """bench/triage.py's mailbox, with --global-per-hour when given."""
    limits = {} if GLOBAL_PER_HOUR is None else {"limits": {"global_per_hour": GLOBAL_PER_HOUR}}
    return triage_bench.settings_for(url, work, **limits)


def seed_history(url: str, box: MailboxSettings, count: int) -> None:
    """`count` customer cases over 180 days, answered after 10 min to 5 h; the last 30
    still waiting."""
    engine = open_store(url)
    step = timedelta(days=180) / count
    with engine.begin() as conn:
        for i in range(count):
            opened = NOW - timedelta(days=180) + i * step
            answered = None if i >= count - 30 else opened + timedelta(minutes=10 + (i * 37) % 290)
            case_store.save_case(
                conn,
                CaseState(
                    id=None,
                    mailbox=box.name,
                    reference=box.reference_prefix,
                    status=CaseStatus.NEW,
                    opened_at=opened,
                    updated_at=opened,
                    customer=f"customer{i % 2000}@example.org",
                    subject=f"Order {i}",
                    first_response_at=answered,
                ),
                prefix=box.reference_prefix,
            )
    engine.dispose()


def deliver_surge(url: str, box: MailboxSettings, count: int) -> None:
    engine = open_store(url)
    start = NOW - timedelta(minutes=10)
    items = []
    for i in range(count):
        msg = EmailMessage()
        msg["From"] = f"surge{i}@example.net"
        msg["To"] = box.address
        msg["Subject"] = f"Is the shop down? ({i})"
        msg["Date"] = format_datetime(start + i * timedelta(minutes=9) / count)
        msg["Message-ID"] = f"<surge-{i}@example.net>"
        msg.set_content("I cannot pay.")
        raw = msg.as_bytes()
        items.append(StoreItem(uid=i + 1, raw=raw, parsed=parse_message(raw)))
    with engine.begin() as conn:
        store_batch(
            conn, Folder(box.name, "INBOX", Origin.INBOX, 1), items, is_history=False, now=NOW
        )
    engine.dispose()


def triage_surge(
    url: str, work: Path, desk_type: type[MailboxContext]
) -> tuple[float, list[datetime]]:
    engine = open_store(url)
    settings, box = settings_for(url, work)
    desk = desk_type(settings, box, engine, Renderer.for_mailbox(settings, box), NOW)
    started = time.perf_counter()
    result = triage_pending(desk, acknowledger=acknowledge_case)
    seconds = time.perf_counter() - started
    assert not result.errors, result.errors
    with engine.connect() as conn:
        dues = list(conn.execute(select(promise.c.due_at).order_by(promise.c.id)).scalars())
        dues += conn.execute(select(outbox.c.next_attempt_at).order_by(outbox.c.id)).scalars()
    engine.dispose()
    return seconds / max(result.acknowledged, 1), dues


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--history-cases", type=int, default=5200)
    parser.add_argument("--surge", type=int, default=300)
    parser.add_argument("--limits", action="store_true")
    parser.add_argument("--global-per-hour", type=int, default=None)
    args = parser.parse_args()
    global GLOBAL_PER_HOUR
    GLOBAL_PER_HOUR = args.global_per_hour
    old_desk, what = (LimitsPerMailDesk, "limits") if args.limits else (PerMailDesk, "predictor")
    with tempfile.TemporaryDirectory(prefix="kw-surge-triage-") as tmp:
        work = Path(tmp)
        seed = work / "seed.db"
        _, box = settings_for(f"sqlite:///{seed}", work)
        seed_history(f"sqlite:///{seed}", box, args.history_cases)
        deliver_surge(f"sqlite:///{seed}", box, args.surge)
        figures = {}
        for name, desk_type in (("per mail", old_desk), ("per pass", MailboxContext)):
            copy = work / f"{name.replace(' ', '-')}.db"
            shutil.copy(seed, copy)
            figures[name] = triage_surge(f"sqlite:///{copy}", work, desk_type)
    (old, old_dues), (new, new_dues) = figures["per mail"], figures["per pass"]
    _, box = settings_for("sqlite://", Path())
    print(
        f"history {args.history_cases} cases, surge {args.surge} new customers (SQLite), "
        f"global limit {box.limits.global_per_hour}/h"
    )
    print(f"  {what} per mail: {old * 1000:7.1f} ms per acknowledged mail")
    print(f"  {what} per pass: {new * 1000:7.1f} ms per acknowledged mail")
    print(f"  speed-up {old / new:.1f}x; same promises: {old_dues == new_dues}")
    return 0 if old_dues == new_dues else 1


if __name__ == "__main__":
    sys.exit(main())
