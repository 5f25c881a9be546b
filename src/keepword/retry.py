"""One retry policy for every reconnect and resend: capped exponential backoff, equal jitter.

The step doubles with each consecutive failure up to a cap; the wait is half the step
plus a random share of the other half ("equal jitter"). The fixed half keeps a floor
under every wait, so a failing server is never hammered; the random half spreads
mailboxes (or outbox rows) that failed together, so they do not retry in lockstep.
The daemon's jobs (per mailbox and job) and the IDLE watcher share MAILBOX_RETRY; the
outbox picks its own `first` and `cap`, nothing else.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

MAX_DOUBLINGS: Final = 40  # however long it fails: no float overflow


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    first: float  # seconds: the step after the first failure
    cap: float  # seconds: the largest step

    def step(self, failures: int) -> float:
        """The longest wait after `failures` consecutive failures (0 after none)."""
        if failures <= 0:
            return 0.0
        doublings = min(failures - 1, MAX_DOUBLINGS)
        return min(self.cap, self.first * 2.0**doublings)

    def delay(self, failures: int, draw: Callable[[], float] = random.random) -> float:
        """Seconds to wait: between half the step and the whole step (`draw` in [0, 1])."""
        step = self.step(failures)
        return step / 2 + step / 2 * draw()


# A job (poll, chase, drain) of a mailbox that failed: that job pauses, the others go on.
# The IDLE watcher restarts with the same policy.
MAILBOX_RETRY: Final = RetryPolicy(first=5.0, cap=15 * 60.0)
# No longer used by keepword itself (the watcher uses MAILBOX_RETRY); kept for callers.
IDLE_RETRY: Final = RetryPolicy(first=1.0, cap=5 * 60.0)
# A mail the SMTP server refused for now (4xx, connection trouble).
OUTBOX_RETRY: Final = RetryPolicy(first=60.0, cap=60 * 60.0)
