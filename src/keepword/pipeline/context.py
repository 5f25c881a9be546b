"""One mailbox's desk for one run of a use case: what every step of it shares.

Triage, acknowledgement and the chase take this one object (Mailman passes
`(mlist, msg, msgdata)`; keepword passes the mailbox context) instead of long parameter
lists: the settings and the mailbox's own, its business calendar, its renderer, the
store handle and the run's `now`. The honest window is measured at most once a run
(the mailbox's history is the same for every case of it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, Engine

from keepword.config import MailboxSettings, Settings
from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.predict import PromisePredictor
from keepword.domain.windows import Window
from keepword.mail.render import Renderer
from keepword.pipeline.promising import mailbox_predictor, update_window


def calendar_for(settings: Settings, box: MailboxSettings) -> BusinessCalendar:
    return BusinessCalendar.from_settings(box.calendar, settings.keepword.timezone)


@dataclass(slots=True)
class MailboxContext:
    """A mailbox at `now`: its settings, calendar, renderer and store."""

    settings: Settings
    box: MailboxSettings
    engine: Engine
    renderer: Renderer
    now: datetime
    calendar: BusinessCalendar = field(init=False)
    _window: Window | None = field(default=None, init=False)
    _predictor: PromisePredictor | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.calendar = calendar_for(self.settings, self.box)

    @property
    def own_addresses(self) -> frozenset[str]:
        """Every address keepword answers for: mail from them is never a customer's."""
        return frozenset(b.address for b in self.settings.mailbox) | {self.box.address}

    def honest_window(self, conn: Connection, *, exclude_case: int | None = None) -> Window:
        """The window to promise now, from this mailbox's measured first responses and
        backlog; measured once a run unless a case is excluded.

        `exclude_case`: the case being answered is already stored and unanswered; it is
        not part of its own queue. Cases of addresses that write like robots are no
        queue at all (store.cases.first_response_history).
        """
        if exclude_case is None and self._window is not None:
            return self._window
        predictor = mailbox_predictor(
            conn, self.box, self.calendar, self.now, exclude_case=exclude_case
        )
        window = predictor.window(self.now)
        if exclude_case is None:
            self._window = window
        return window

    def residual_window(self, conn: Connection, case_id: int, opened_at: datetime) -> Window:
        """The new time for a customer update of a case open since `opened_at`: the
        remaining time given it has already waited that long (its own wait is
        evidence, not a fresh sample). The predictor is built once a run."""
        if self._predictor is None:
            self._predictor = mailbox_predictor(conn, self.box, self.calendar, self.now)
        return update_window(self._predictor, self.now, case_id, opened_at)
