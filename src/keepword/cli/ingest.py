"""`keepword import`: take in the existing mail of every mailbox as history.

Streams folder by folder in batches (memory stays bounded whatever the mailbox size),
with a progress bar, and ends with a summary per folder. Running it again only takes
in what arrived since; a folder keepword already knows is polled as usual.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from sqlalchemy import Engine

from keepword.cli.common import engine_from, local_failure_exit, now, settings_from, store_writer
from keepword.config import MailboxSettings, Settings
from keepword.domain.model import Origin
from keepword.errors import ConfigError, KeepwordError, MailboxError
from keepword.mail.render import Renderer
from keepword.pipeline.context import MailboxContext
from keepword.pipeline.history import HistoryImport
from keepword.pipeline.ingest import (
    Folder,
    MailboxPollResult,
    MailSession,
    plan_history,
    poll_folder,
    smallest_first,
    triaging_behind,
    watched_folders,
)
from keepword.pipeline.parse_workers import ParsePool
from keepword.pipeline.triage import triage_pending
from keepword.store.checkpoints import BackgroundCheckpoints


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser(
        "import",
        help="take in the existing mail of every mailbox as history (not answered)",
    )
    parser.add_argument("--mailbox", help="only this mailbox (by its name)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=cmd_import)


def _now() -> datetime:
    return now()


def cmd_import(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    boxes = list(settings.mailbox)
    if args.mailbox:
        try:
            boxes = [settings.mailbox_named(args.mailbox)]
        except KeyError:
            source = settings.source or "config"
            raise ConfigError([f"{source}: no [[mailbox]] named {args.mailbox!r}"]) from None
    if not boxes:
        print("keepword: no [[mailbox]] configured: nothing to import", file=sys.stderr)
        return 1
    try:
        with store_writer(settings):  # never beside a running `keepword run`
            return _import(settings, boxes, quiet=args.quiet)
    except KeepwordError as exc:
        if (code := local_failure_exit(exc)) is None:
            raise
        return code


def _import(settings: Settings, boxes: list[MailboxSettings], *, quiet: bool) -> int:
    from keepword.pipeline.ingest import default_session_factory

    engine = engine_from(settings)
    connect = default_session_factory(settings)
    console = Console(stderr=True)
    _log_to(console)
    results: list[MailboxPollResult] = []
    cased: dict[str, int] = {}  # per mailbox: the cases its history opened
    failed = False
    with (
        BackgroundCheckpoints(engine),
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=quiet or not console.is_terminal,
        ) as bar,
    ):
        for box in boxes:
            result = MailboxPollResult(mailbox=box.name)
            results.append(result)
            try:
                session = connect(box)
            except Exception as exc:
                failed = True
                result.errors["*"] = str(exc)
                console.print(f"[red]mailbox {box.name}: cannot connect: {escape(str(exc))}")
                continue
            # Triaged into cases while it is taken in, oldest first (pipeline.history).
            desk = _HistoryDesk(settings, box, engine)
            history = HistoryImport(desk)
            parsers = ParsePool()  # kept across the folders
            mailbox = Folder(engine, box, "", Origin.INBOX, _now, history=history, parsers=parsers)
            try:
                with triaging_behind(history, engine):
                    failed |= _import_folders(session, mailbox, result, bar, console)
            finally:
                parsers.stop()
                session.close()
            # Listed as configured, whatever order they went in (the smallest first).
            order = [folder for folder, _ in watched_folders(box)]
            result.folders = {f: result.folders[f] for f in order if f in result.folders}
            desk(None)  # what is left: all of it (also after a folder failed)
            cased[box.name] = desk.cases
    _summary(Console(), results, cased)
    return 1 if failed else 0


def _import_folders(
    session: MailSession,
    mailbox: Folder,
    result: MailboxPollResult,
    bar: Progress,
    console: Console,
) -> bool:
    """Plan and import the mailbox's folders, the smallest first; whether one failed."""
    box, failed = mailbox.box, False
    plan_history(session, mailbox, watched_folders(box))
    for folder, role in smallest_first(watched_folders(box), mailbox.history):
        task = bar.add_task(f"{box.name}/{folder}", total=None)
        try:
            result.folders[folder] = poll_folder(
                session,
                replace(mailbox, name=folder, role=role),
                progress=_advance(bar, task),
                plan=_total(bar, task),
            )
        except Exception as exc:
            failed = True
            result.errors[folder] = f"{type(exc).__name__}: {exc}"
            console.print(f"[red]mailbox {box.name} folder {escape(folder)}: {escape(str(exc))}")
            if isinstance(exc, MailboxError | OSError):
                break
    return failed


class _HistoryDesk:
    """Triages a mailbox's history during and after its import (never its live mail:
    that is the daemon's, which acknowledges it); counts the cases it opened."""

    def __init__(self, settings: Settings, box: MailboxSettings, engine: Engine) -> None:
        self.settings, self.box, self.engine = settings, box, engine
        self.renderer = Renderer.for_mailbox(settings, box)
        self.cases = 0

    def __call__(self, through: datetime | None) -> None:
        while True:
            desk = MailboxContext(self.settings, self.box, self.engine, self.renderer, _now())
            done = triage_pending(desk, through=through, history_only=True)
            self.cases += done.opened
            if not done.more:
                return


def _log_to(console: Console) -> None:
    """Warnings (quarantined mail, folder errors) above the progress bar, not through it."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(RichHandler(console=console, show_path=False, markup=False))
        root.setLevel(logging.WARNING)


def _advance(bar: Progress, task: TaskID) -> Any:
    return lambda count: bar.advance(task, count)


def _total(bar: Progress, task: TaskID) -> Any:
    return lambda total: bar.update(task, total=total)


def _summary(console: Console, results: list[MailboxPollResult], cased: dict[str, int]) -> None:
    table = Table(title="keepword import")
    for column in ("mailbox", "folder", "new", "known", "quarantined", "note"):
        table.add_column(column, justify="right" if column in ("new", "known") else "left")
    for result in results:
        for folder, polled in result.folders.items():
            note = "history" if polled.is_history else ""
            if polled.uidvalidity_changed:
                note = (note + " uidvalidity changed: re-scanned").strip()
            table.add_row(
                result.mailbox,
                escape(folder),
                str(polled.new),
                str(polled.known),
                str(polled.quarantined),
                note,
            )
        for folder, error in result.errors.items():
            table.add_row(result.mailbox, escape(folder), "-", "-", "-", escape(f"error: {error}"))
    console.print(table)
    for mailbox, count in cased.items():
        console.print(f"{mailbox}: the history is in {count} new case(s)")
