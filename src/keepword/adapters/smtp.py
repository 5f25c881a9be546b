"""aiosmtplib adapter: one connection per outbox drain, failures split into retry / give up.

- TLS as configured: implicit TLS (465), STARTTLS (587) or plain (loopback only; the
  config refuses plain for any other host).
- AUTH PLAIN/LOGIN (aiosmtplib picks what the server offers), or XOAUTH2 when the
  secret is an OAuth2 access token. No AUTH when no secret is given (local relays).
- Outcomes of one mail, split by what the relay can have done with it:
  * refused before the relay took it (a reply to MAIL, RCPT, DATA or the final dot, or a
    timeout / dropped connection before the DATA phase): nothing went out.
    `SmtpTemporaryError` for 4xx and connection trouble (try again later),
    `SmtpPermanentError` for 5xx (this mail will never go out as it is).
  * no reply in the DATA phase (timeout or dropped connection once the message may
    have been written, up to the reply to the final dot): `SmtpOutcomeUnknownError`. The
    relay may have taken the mail; sending it again blindly may deliver it twice, so
    the outbox resolves it first (send.py).
  * `SmtpConnectError` when the server cannot be reached or refuses the login (a
    mailbox problem, not a problem of any one mail; nothing was sent).
- Timeouts: `timeout` for every command, `data_timeout` (RFC 5321 4.5.3.2.6: 10
  minutes) for the DATA phase, so a relay that is slow to accept is waited for rather
  than given up on just before it says 250.
Messages name the server and the reply, never the secret.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import aiosmtplib
from aiosmtplib.response import SMTPResponse

from keepword.adapters.credentials import Secret
from keepword.config import SmtpSettings, TlsMode
from keepword.errors import MailboxError

log = logging.getLogger(__name__)


class SmtpError(MailboxError):
    """Sending failed."""


class SmtpTemporaryError(SmtpError):
    """4xx, a dropped connection or a timeout: try again later."""


class SmtpConnectError(SmtpTemporaryError):
    """The server could not be reached or refused the login: nothing was sent."""


class SmtpPermanentError(SmtpError):
    """5xx: this mail will never go out as it is; record it on the case."""


class SmtpRecipientsRefusedError(SmtpPermanentError):
    """Every recipient was refused for good (5xx to RCPT TO): the addresses, not the mail.

    `refused` maps each address to the relay's reply ("550 5.1.1 no such user").
    """

    def __init__(self, message: str, refused: dict[str, str]) -> None:
        super().__init__(message)
        self.refused = refused


class SmtpOutcomeUnknownError(SmtpError):
    """No reply in the DATA phase: the relay may or may not have taken the mail."""


class _Client(aiosmtplib.SMTP):
    """aiosmtplib.SMTP that notes when the DATA phase begins and gives it its own timeout."""

    def __init__(self, *, data_timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_timeout = data_timeout
        self.in_data = False

    async def data(self, message: str | bytes, /, *, timeout: Any = None) -> SMTPResponse:
        self.in_data = True  # from here on, a missing reply leaves the outcome unknown
        return await super().data(message, timeout=self.data_timeout)


class SmtpSender:
    """`async with SmtpSender(settings, secret) as smtp: await smtp.send(...)`."""

    def __init__(self, settings: SmtpSettings, secret: Secret | str | None) -> None:
        self._settings = settings
        self._secret = Secret(secret) if isinstance(secret, str) else secret
        self._client: _Client | None = None
        self.sent = 0

    def __repr__(self) -> str:
        return f"SmtpSender({self.where})"

    @property
    def where(self) -> str:
        return f"{self._settings.host}:{self._settings.effective_port()}"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _tls_context(self) -> ssl.SSLContext | None:
        if self._settings.tls is TlsMode.PLAIN:
            return None
        ca = str(self._settings.ca_file) if self._settings.ca_file else None
        return ssl.create_default_context(cafile=ca)

    async def connect(self) -> None:
        s = self._settings
        client = _Client(
            data_timeout=s.data_timeout,
            hostname=s.host,
            port=s.effective_port(),
            timeout=s.timeout,
            use_tls=s.tls is TlsMode.IMPLICIT,
            start_tls=s.tls is TlsMode.STARTTLS,
            tls_context=self._tls_context(),
        )
        try:
            await client.connect()
            await self._login(client)
        except aiosmtplib.SMTPAuthenticationError as exc:
            await _quietly_close(client)
            raise SmtpConnectError(
                f"SMTP {self.where}: login as {s.username} refused: {exc.code} {exc.message}"
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            await _quietly_close(client)
            raise SmtpConnectError(f"SMTP {self.where}: cannot connect: {_describe(exc)}") from None
        self._client = client

    async def _login(self, client: aiosmtplib.SMTP) -> None:
        if self._secret is None:
            return
        user = self._settings.username
        if self._secret.is_oauth2:
            await client.auth_xoauth2(user, self._secret.reveal())
            return
        await client.login(user, self._secret.reveal())

    async def send(self, sender: str, recipients: Sequence[str], raw: bytes) -> dict[str, str]:
        """Send one message; returns the recipients refused while others accepted it.

        Raises SmtpTemporaryError / SmtpPermanentError when nobody got it, and
        SmtpOutcomeUnknownError when the relay did not answer the DATA phase.
        """
        if not self.connected:
            await self.connect()
        client = self._client
        assert client is not None
        client.in_data = False
        try:
            refused, _ = await client.sendmail(sender, list(recipients), raw)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            replies = {r.recipient: f"{r.code} {r.message}" for r in exc.recipients}
            text = "; ".join(f"{a}: {reply}" for a, reply in replies.items())
            message = f"SMTP {self.where}: recipients refused: {text}"
            # Permanent only when every refusal is permanent: a 4xx may clear up.
            if all(_permanent(r.code) for r in exc.recipients):
                raise SmtpRecipientsRefusedError(message, replies) from None
            raise SmtpTemporaryError(message) from None
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            await self.close()
            if client.in_data:
                raise SmtpOutcomeUnknownError(
                    f"SMTP {self.where}: no reply to the message: {_describe(exc)}"
                ) from None
            raise SmtpTemporaryError(f"SMTP {self.where}: {_describe(exc)}") from None
        except aiosmtplib.SMTPResponseException as exc:
            kind = SmtpPermanentError if _permanent(exc.code) else SmtpTemporaryError
            raise kind(f"SMTP {self.where}: {exc.code} {exc.message}") from None
        except aiosmtplib.SMTPException as exc:
            await self.close()
            raise SmtpTemporaryError(f"SMTP {self.where}: {_describe(exc)}") from None
        self.sent += 1
        return {addr: f"{r.code} {r.message}" for addr, r in refused.items()}

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _quietly_close(client)


def _permanent(code: int) -> bool:
    return 500 <= code < 600


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _quietly_close(client: aiosmtplib.SMTP) -> None:
    try:
        if client.is_connected:
            await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        client.close()
