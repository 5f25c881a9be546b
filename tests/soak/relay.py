"""The soak's SMTP relay: aiosmtpd that records every accepted mail and can misbehave.

Each accepted mail is kept with the real and the virtual time of its acceptance (the
relay reads the same sped-up clock as the daemon), and the headers the invariants need
(keepword's kind and case headers, Message-ID, recipients). Nothing is delivered on:
the soak driver reads the log and makes the robots on the other side (auto-responders,
a ticket system, a bouncing domain) answer into the shared inbox itself.

Fault modes (switched by the driver, one at a time):
- `tempfail`: 451 at MAIL FROM (the relay is overloaded): keepword must retry later;
- `outage`:   the listener is stopped, connections are refused;
- `slow`:     every reply to DATA waits `slow_seconds` (real) first;
- per-recipient 550 (`refuse`): an address that does not exist, for good.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from keepword.clock import SpedUpClock
from tests.fixtures.smtp import SMTP_HOST, free_port

RELAY_USER = "keepword@example.com"
RELAY_PASSWORD = "soak-relay-pw"
MODES = ("normal", "tempfail", "slow", "outage")


@dataclass(frozen=True)
class RelayedMail:
    """One mail the relay accepted (answered 250 to its DATA)."""

    real_at: float
    at: datetime  # virtual time of the 250
    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message_id: str
    kind: str | None  # X-Keepword-Kind, None for mail keepword did not write
    case: str | None  # X-Keepword-Case
    subject: str
    in_reply_to: str | None


def _relayed(
    clock: SpedUpClock, mail_from: str, rcpt_tos: tuple[str, ...], raw: bytes
) -> RelayedMail:
    msg = message_from_bytes(raw, policy=default_policy)

    def header(name: str) -> str | None:
        value = msg.get(name)
        return None if value is None else str(value).strip()

    return RelayedMail(
        real_at=time.time(),
        at=clock.now(),
        mail_from=mail_from,
        rcpt_tos=tuple(r.lower() for r in rcpt_tos),
        raw=raw,
        message_id=(header("Message-ID") or "").strip("<>"),
        kind=header("X-Keepword-Kind"),
        case=header("X-Keepword-Case"),
        subject=header("Subject") or "",
        in_reply_to=(header("In-Reply-To") or "").strip("<>") or None,
    )


@dataclass
class FaultyHandler:
    clock: SpedUpClock
    mode: str = "normal"
    slow_seconds: float = 0.3
    refused: set[str] = field(default_factory=set)
    accepted: list[RelayedMail] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=dict)  # reply class -> count
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _count(self, what: str) -> None:
        with self.lock:
            self.answers[what] = self.answers.get(what, 0) + 1

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.mode == "tempfail":
            self._count("451")
            return "451 4.3.2 soak: try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        with self.lock:
            refused = address.lower() in self.refused
        if refused:
            self._count("550")
            return "550 5.1.1 soak: no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.mode == "slow":
            self._count("slow")
            await asyncio.sleep(self.slow_seconds)
        raw = bytes(envelope.original_content or envelope.content)
        mail = _relayed(self.clock, str(envelope.mail_from), tuple(envelope.rcpt_tos), raw)
        with self.lock:
            self.accepted.append(mail)
        self._count("250")
        return "250 2.0.0 soak: accepted"


def _authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, data: Any
) -> AuthResult:
    if not isinstance(data, LoginPassword):
        return AuthResult(success=False, handled=False)
    ok = data.login.decode() == RELAY_USER and data.password.decode() == RELAY_PASSWORD
    return AuthResult(success=ok, handled=False)


class FaultyRelay:
    """A running relay on a fixed loopback port (kept across outages)."""

    def __init__(self, clock: SpedUpClock) -> None:
        self.host = SMTP_HOST
        self.port = free_port()
        self.handler = FaultyHandler(clock)
        self._controller: Controller | None = None

    def start(self) -> None:
        if self._controller is None:
            self._controller = Controller(
                self.handler,
                hostname=self.host,
                port=self.port,
                ready_timeout=10,
                authenticator=_authenticator,
                auth_require_tls=False,
            )
            self._controller.start()

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        if mode == "outage":
            self.stop()
        else:
            self.start()
        self.handler.mode = mode

    def refuse(self, address: str) -> None:
        with self.handler.lock:
            self.handler.refused.add(address.lower())

    @property
    def accepted(self) -> list[RelayedMail]:
        with self.handler.lock:
            return list(self.handler.accepted)

    @property
    def answers(self) -> dict[str, int]:
        with self.handler.lock:
            return dict(self.handler.answers)
