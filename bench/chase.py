"""The chase's cost in the number of open cases: linear, not quadratic.

    .venv/bin/python bench/chase.py [--open 200 2000] [--history-cases 5200]

The chase runs every minute and reads every open case (its state, its open promises,
its chase mail already queued). For each count in `--open`: a mailbox with
`--history-cases` cases (bench/surge_triage.py's store; the answered ones closed, as a
history mostly is, the last 30 still waiting) and that many new customers, triaged and
acknowledged (each case holds an open promise), then one chase
pass (`chase_mailbox`) at a time when nothing is due yet: what every minute of a busy
day costs. Each pass runs twice on copies of the same store: with today's read of a
case's open promises, and with the read before (an ORDER BY due_at that SQLite served
from ix_promise_open, walking every open promise of every case). Figures: ms per open
case; flat in the count is linear.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import and_, bindparam, select, update

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from bench.surge_triage import NOW, deliver_surge, seed_history, settings_for  # noqa: E402

from keepword.domain.model import CaseStatus, PromiseState  # noqa: E402
from keepword.mail.render import Renderer  # noqa: E402
from keepword.pipeline.acknowledge import acknowledge_case  # noqa: E402
from keepword.pipeline.chase import chase_mailbox  # noqa: E402
from keepword.pipeline.context import MailboxContext  # noqa: E402
from keepword.pipeline.triage import triage_pending  # noqa: E402
from keepword.store import promises as promise_store  # noqa: E402
from keepword.store.db import open_store  # noqa: E402
from keepword.store.tables import case, promise  # noqa: E402

# The read before (2026-12-02): ordered by the query, which SQLite served through
# ix_promise_open (state, due_at) instead of the case's own index.
ORDERED_READ = (
    select(promise)
    .where(
        and_(promise.c.case_id == bindparam("case_id"), promise.c.state == PromiseState.OPEN.value)
    )
    .order_by(promise.c.due_at, promise.c.id)
)


def desk_for(url: str, work: Path) -> MailboxContext:
    settings, box = settings_for(url, work)
    engine = open_store(url)
    return MailboxContext(settings, box, engine, Renderer.for_mailbox(settings, box), NOW)


def store_with_open_cases(work: Path, history: int, count: int) -> Path:
    seed = work / f"open-{count}.db"
    url = f"sqlite:///{seed}"
    _, box = settings_for(url, work)
    seed_history(url, box, history)
    engine = open_store(url)
    with engine.begin() as conn:  # the answered history: closed, not chased
        answered = case.c.first_response_at.is_not(None)
        conn.execute(update(case).where(answered).values(status=CaseStatus.CLOSED.value))
    engine.dispose()
    deliver_surge(url, box, count)
    desk = desk_for(url, work)
    result = triage_pending(desk, acknowledger=acknowledge_case)
    assert result.acknowledged == count, result
    desk.engine.dispose()
    return seed


def chase_ms_per_case(seed: Path, work: Path, name: str) -> tuple[float, int]:
    copy = work / f"{seed.stem}-{name}.db"
    shutil.copy(seed, copy)
    desk = desk_for(f"sqlite:///{copy}", work)
    started = time.perf_counter()
    result = chase_mailbox(desk)
    seconds = time.perf_counter() - started
    desk.engine.dispose()
    assert not result.failed, result
    return seconds * 1000 / max(result.cases, 1), result.cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--open", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--history-cases", type=int, default=5200)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kw-chase-") as tmp:
        work = Path(tmp)
        for count in args.open:
            seed = store_with_open_cases(work, args.history_cases, count)
            today, cases = chase_ms_per_case(seed, work, "today")
            kept = promise_store._OPEN_PROMISES
            promise_store._OPEN_PROMISES = ORDERED_READ
            try:
                before, _ = chase_ms_per_case(seed, work, "before")
            finally:
                promise_store._OPEN_PROMISES = kept
            rows.append((count, cases, today, before))
    print(f"history {args.history_cases} cases; one chase pass, nothing due yet (SQLite)")
    print("| open cases | cases chased | ms a case | ms a case, the read before | before / today |")
    print("|---:|---:|---:|---:|---:|")
    for count, cases, today, before in rows:
        print(f"| {count} | {cases} | {today:.2f} | {before:.2f} | {before / today:.2f} |")
    first, last = rows[0], rows[-1]
    print(f"ms a case at {last[0]} / at {first[0]}: {last[2] / first[2]:.2f} (1.0: linear)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
