"""The daemon's one clock: wall time for records, monotonic time for waits, and sleeping.

Every part of the running service (the scheduler's triggers, the use cases' `now`,
backoff waits, the IDLE watcher's retries) asks the same `Clock`, so a test can run the
real daemon on a sped-up clock and see days of traffic in minutes (tests/soak), and
nothing mixes two notions of time.

`SpedUpClock` is anchored to the real wall clock, not to the process: every process
that shares an anchor (a daemon restarted after SIGKILL, a CLI call, the soak driver)
agrees on the virtual time without talking to each other.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

SPEED_ENV = "KEEPWORD_CLOCK"
"""Test hook: "SPEED@VIRTUAL_ISO@REAL_EPOCH" runs the process on a sped-up clock."""


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC wall time: what is stored and compared with due times."""
        ...

    def monotonic(self) -> float:
        """Seconds for measuring waits and backoff (never jumps with the wall clock)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class SpedUpClock:
    """Virtual time running `speed` times as fast as real time from an anchor.

    virtual = virtual_anchor + (real - real_anchor) * speed
    """

    def __init__(self, speed: float, virtual_anchor: datetime, real_anchor: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self.virtual_anchor = virtual_anchor.astimezone(UTC)
        self.real_anchor = real_anchor

    def now(self) -> datetime:
        return self.virtual_anchor + timedelta(seconds=self.monotonic())

    def monotonic(self) -> float:
        return (time.time() - self.real_anchor) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    def to_real_seconds(self, virtual_seconds: float) -> float:
        return virtual_seconds / self.speed

    def encode(self) -> str:
        return f"{self.speed:g}@{self.virtual_anchor.isoformat()}@{self.real_anchor!r}"

    @classmethod
    def decode(cls, text: str) -> SpedUpClock:
        speed, virtual, real = text.split("@")
        return cls(float(speed), datetime.fromisoformat(virtual), float(real))


def clock_from_environment() -> Clock:
    """The system clock, unless the test hook KEEPWORD_CLOCK asks for a sped-up one."""
    spec = os.environ.get(SPEED_ENV)
    return SpedUpClock.decode(spec) if spec else SystemClock()


SYSTEM_CLOCK: Clock = SystemClock()
