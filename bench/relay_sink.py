"""The relay the surge benchmarks send to, and the same-run limit they compare with.

`Sink` is an aiosmtpd handler that takes every mail at once and records when (and to
whom); `sending_limit` is the time to send the same mails over one reused connection,
the floor any outbox drain is measured against.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiosmtplib
from aiosmtpd.controller import Controller
from tests.fixtures.smtp import open_relay

SENDER = "support@example.com"
RELAY_PASSWORD = "relay-pw"  # the sink accepts any login


class Sink:
    """Accepts every mail; records when, and to whom."""

    def __init__(self) -> None:
        self.accepted: list[tuple[float, tuple[str, ...]]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.accepted.append((time.monotonic(), tuple(envelope.rcpt_tos)))
        return "250 2.0.0 accepted"

    def times(self) -> list[float]:
        return [at for at, _ in self.accepted]


def start_sink(port: int) -> tuple[Sink, Controller]:
    """A running sink on 127.0.0.1:`port` with AUTH (any login) and no TLS."""
    sink = Sink()
    return sink, open_relay(sink, port)


async def sending_limit(
    port: int, raws: list[bytes], recipient: Callable[[int], str] = "c{}@example.org".format
) -> float:
    """Seconds to send `raws` over one connection: the relay's own limit in this run."""
    started = time.monotonic()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
    await client.connect()
    await client.login(SENDER, RELAY_PASSWORD)
    for n, raw in enumerate(raws):
        await client.sendmail(SENDER, [recipient(n)], raw)
    await client.quit()
    return time.monotonic() - started
