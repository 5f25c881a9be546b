"""A surge's next batch of live mail, fetched and parsed in a worker process meanwhile.

In a surge the daemon takes in one fetch batch a poll, then triages it and drains what
that queued (runtime.service). Fetching and parsing the next batch (mail-parser: ~0.35 ms
a mail, ~0.2 s a batch of 500 on this machine) would wait for all of that, sharing one
GIL with it; a worker process does it meanwhile, on the other core, over an IMAP
connection of its own (EXAMINE and BODY.PEEK: read-only, nothing marked seen).

The next poll takes what was fetched only if it asks for the same UIDs first, in the
same folder of the same UIDVALIDITY; anything else (mail expunged meanwhile, a folder
recreated, the worker failed or died, a stop) drops it, and the poll fetches for itself
as it always did. Nothing is stored from here: the folder's cursor moves when the poll
stores the batch, so a prefetch lost at a stop or a crash costs nothing.

The worker (spawned: ~0.25 s, ~40 MB) starts with a surge and stops when a poll finds no
more, so an idle daemon keeps no extra process. This module is what the worker imports:
it keeps to the IMAP adapter and the parser.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime

from keepword.adapters.credentials import resolve_secret
from keepword.adapters.imap import FetchedMessage, ImapSession
from keepword.config import ImapSettings
from keepword.mail.parse import ParsedMessage, exit_with_parent, parse_message

log = logging.getLogger(__name__)

# The first batch a surge's worker is asked for is smaller than a fetch batch: the
# worker is spawned for it (~0.5 s) and the next poll waits for it, since the first
# slice left nothing stored to triage meanwhile (bench/surge_daemon.py).
FIRST_ASK = 200

# One fetched mail as the worker hands it back: uid, raw, parsed, INTERNALDATE (UTC).
Fetched = tuple[int, bytes, ParsedMessage, datetime | None]


@dataclass(frozen=True, slots=True)
class Asked:
    """What a prefetch was asked for: these UIDs of a folder at one UIDVALIDITY."""

    folder: str
    uidvalidity: int
    uids: tuple[int, ...]


class Prefetcher:
    """One mailbox's prefetch: at most one batch asked for at a time (blocking calls,
    from the mailbox's poll)."""

    def __init__(self, imap: ImapSettings) -> None:
        self._imap = imap
        self._pool: ProcessPoolExecutor | None = None
        self._asked: Asked | None = None
        self._future: Future[list[Fetched]] | None = None
        self.taken = 0  # mails handed to a poll (tests, benchmarks)

    @property
    def running(self) -> bool:
        """A worker process is up (between a surge's first poll and its end)."""
        return self._pool is not None

    @property
    def busy(self) -> bool:
        """The batch asked for is still being fetched and parsed (a poll would wait)."""
        return self._future is not None and not self._future.done()

    def ask(self, asked: Asked) -> None:
        """Fetch and parse these UIDs in the worker (started if need be); an earlier
        prefetch not taken is dropped."""
        self._drop_asked()
        if not asked.uids:
            return
        try:
            self._future = self._started().submit(fetch_parsed, self._imap, asked)
            self._asked = asked
        except Exception:  # no worker: the poll fetches for itself, as without one
            log.warning("imap %s: no prefetch worker", self._imap.host, exc_info=True)
            self.stop()

    def take(
        self, folder: str, uidvalidity: int, uids: Sequence[int]
    ) -> tuple[tuple[int, ...], list[Fetched]] | None:
        """(the UIDs asked for, the mails fetched of them) if `uids` (a poll's of this
        folder, ascending) begin with the UIDs asked for, at this UIDVALIDITY; waits for
        them. None: the poll fetches for itself (another folder's poll leaves it be)."""
        asked, future = self._asked, self._future
        if asked is None or future is None or asked.folder != folder:
            return None
        self._asked = self._future = None
        if (asked.uidvalidity, asked.uids) != (uidvalidity, tuple(uids[: len(asked.uids)])):
            future.cancel()
            return None
        try:
            fetched = future.result(timeout=self._imap.timeout * 3)  # connect, STATUS, FETCH
        except FutureTimeout:
            log.warning("imap %s: prefetch took too long; fetching here", self._imap.host)
            self.stop(wait=False)  # the worker ends with its IMAP timeout, or its parent
            return None
        except Exception as exc:  # the worker's IMAP error, or the worker died
            log.warning("imap %s: prefetch failed, fetching here: %s", self._imap.host, exc)
            self.stop()  # a fresh worker (and connection) at the next ask
            return None
        self.taken += len(fetched)
        return asked.uids, fetched

    def stop(self, *, wait: bool = True) -> None:
        """Stop the worker (the surge is over, or it failed); nothing asked stays.
        `wait`: until the worker process has exited (it finishes a fetch under way)."""
        self._drop_asked()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)

    def _drop_asked(self) -> None:
        if self._future is not None:
            self._future.cancel()
        self._asked = self._future = None

    def _started(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),  # the daemon has threads
                initializer=exit_with_parent,
                initargs=(os.getpid(),),
            )
        return self._pool


# -- in the worker process ---------------------------------------------------------------


class FolderChangedError(Exception):
    """The folder's UIDVALIDITY is not the one the prefetch was asked for."""


_session: ImapSession | None = None  # the worker's own connection, kept for the surge


def fetch_parsed(imap: ImapSettings, asked: Asked) -> list[Fetched]:
    """In the worker: fetch the UIDs asked for (if the folder is still at that
    UIDVALIDITY) and parse each; expunged UIDs are left out, as by the poll itself.
    The worker resolves the secret from its configured source itself (a Secret never
    crosses a process boundary)."""
    global _session
    try:
        if _session is None:
            _session = ImapSession(imap, resolve_secret(imap))
            _session.connect()
        fetched = _fetch(_session, asked)
    except Exception:
        session, _session = _session, None
        if session is not None:
            session.close()
        raise
    return [(f.uid, f.raw, parse_message(f.raw), f.internaldate) for f in fetched]


def _fetch(session: ImapSession, asked: Asked) -> list[FetchedMessage]:
    now = session.status(asked.folder).uidvalidity
    if now != asked.uidvalidity:  # the poll sees it too, and re-scans
        raise FolderChangedError(f"{asked.folder}: UIDVALIDITY {asked.uidvalidity} -> {now}")
    fetched = session.fetch(asked.uids, folder=asked.folder)
    session.unselect()
    return fetched
