"""`keepword check`: is the configuration valid and can the store and every server be used?

Validates the config (errors are printed by the CLI's main; no [[mailbox]] is a FAIL),
checks the database without changing it (connect, schema up to date or migratable,
writable), then per mailbox resolves
the secrets, logs in to IMAP and looks for the configured folders, and connects, says
EHLO and logs in to SMTP if configured. On SMTP it then asks the relay, without sending
anything (MAIL FROM, RCPT TO, RSET), whether it takes the mailbox's address as sender
and the team's and the lead's addresses as recipients: a member's address with a typo,
or of someone who left, would refuse every reminder for good, and only the failed rows
would show it. One line per server; exit 0 only if all are ok. Secrets are never
printed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ssl
from dataclasses import dataclass
from typing import Any

import aiosmtplib
from sqlalchemy.engine import make_url

from keepword.adapters.credentials import Secret, resolve_secret
from keepword.adapters.imap import ImapSession
from keepword.cli.common import settings_from
from keepword.config import ImapSettings, MailboxSettings, Settings, SmtpSettings, TlsMode
from keepword.domain.reachability import refuses_the_address
from keepword.errors import ConfigError, KeepwordError
from keepword.pipeline.send import without_relay
from keepword.store.health import check_store


@dataclass(frozen=True)
class CheckResult:
    mailbox: str
    server: str  # "IMAP user at host:port"
    ok: bool
    detail: str

    def line(self) -> str:
        status = "ok  " if self.ok else "FAIL"
        return f"{status} {self.mailbox}: {self.server}: {self.detail}"


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser(
        "check", help="validate the config and log in to every IMAP/SMTP server"
    )
    parser.add_argument("--mailbox", help="only this mailbox (by its name)")
    parser.set_defaults(handler=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if not settings.mailbox:
        print(f"FAIL config: {settings.source}: no [[mailbox]] configured: nothing to run")
        return 2  # as `keepword run` does
    boxes = _selected(settings, args.mailbox)
    print(f"ok   config: {settings.source} ({len(settings.mailbox)} mailbox(es))")
    store = check_database(settings)
    print(store.line(), flush=True)
    results: list[CheckResult] = [store]
    for box in boxes:
        for result in check_mailbox(box):
            print(result.line(), flush=True)
            results.append(result)
        if (relay := without_relay(box)) is not None:  # advice, as below
            print(f"warn {box.name}: smtp: {relay}", flush=True)
        for warning in trust_warnings(box):  # advice: never changes the exit code
            print(f"warn {box.name}: trust: {warning}", flush=True)
    return 0 if all(r.ok for r in results) else 1


def trust_warnings(box: MailboxSettings) -> list[str]:
    """What the trust configuration cannot prove (docs/trust.md): team mail that would
    count as a customer's."""
    trust = box.trust
    if trust.dkim_domains or trust.trusted_authserv_ids:
        return []
    domain = box.address.rpartition("@")[2]
    if box.sent_folder is None:
        proof = "nothing proves team mail (no sent_folder): every reply counts as a customer's"
    else:
        proof = (
            f"only the {box.sent_folder} folder of {box.address} proves team mail: a reply "
            f"a team member sends from their own mailbox with {box.address} in Cc counts "
            "as a customer's mail (it keeps no promise and carries no command)"
        )
    return [
        f'{proof}; set [mailbox.trust] dkim_domains = ["{domain}"] (their DKIM '
        'signatures) or trusted_authserv_ids = ["<your mail server\'s authserv-id>"] '
        "(its Authentication-Results), see docs/trust.md"
    ]


def check_database(settings: Settings) -> CheckResult:
    url = settings.keepword.effective_database_url()
    shown = make_url(url).render_as_string(hide_password=True)
    health = check_store(url)
    return CheckResult("store", f"database {shown}", ok=health.ok, detail=health.detail)


def _selected(settings: Settings, name: str | None) -> list[MailboxSettings]:
    if not name:
        return list(settings.mailbox)
    try:
        return [settings.mailbox_named(name)]
    except KeyError:
        raise ConfigError([f"{settings.source}: no [[mailbox]] named {name!r}"]) from None


def check_mailbox(box: MailboxSettings) -> list[CheckResult]:
    results = [with_tls_hint(check_imap(box), box.imap, implicit_port=993)]
    if box.smtp is not None:
        results.append(with_tls_hint(check_smtp(box), box.smtp, implicit_port=465))
    return results


def team_recipients(box: MailboxSettings) -> list[str]:
    """Whom keepword's team mail goes to: the members and the lead, in config order."""
    return list(dict.fromkeys([*box.team, *([box.lead] if box.lead else [])]))


def with_tls_hint(
    result: CheckResult, server: ImapSettings | SmtpSettings, *, implicit_port: int
) -> CheckResult:
    """OpenSSL's WRONG_VERSION_NUMBER means TLS met a port that speaks plain text first."""
    if result.ok or "wrong_version_number" not in result.detail.lower():
        return result
    if server.tls is TlsMode.IMPLICIT:
        hint = (
            f"port {server.effective_port()} does not start with TLS: "
            f'try tls = "starttls" on this port, or port {implicit_port}'
        )
    else:
        hint = f'the server\'s TLS does not match: try tls = "implicit" on port {implicit_port}'
    return dataclasses.replace(result, detail=f"{result.detail} ({hint})")


def _where(kind: str, server: ImapSettings | SmtpSettings) -> str:
    return f"{kind} {server.username} at {server.host}:{server.effective_port()}"


def required_folders(box: MailboxSettings) -> list[str]:
    folders = list(box.folders)
    for extra in (box.sent_folder, box.done_folder):
        if extra and extra not in folders:
            folders.append(extra)
    return folders


def check_imap(box: MailboxSettings) -> CheckResult:
    where = _where("IMAP", box.imap)
    try:
        secret = resolve_secret(box.imap)
        with ImapSession(box.imap, secret) as imap:
            existing = set(imap.folders())
            capabilities = imap.capabilities()
    except KeepwordError as exc:
        return CheckResult(box.name, where, ok=False, detail=_strip(str(exc), where))
    wanted = required_folders(box)
    missing = [f for f in wanted if f not in existing and f.upper() != "INBOX"]
    idle = "IDLE" if "IDLE" in capabilities else "no IDLE (polling)"
    if missing:
        return CheckResult(
            box.name,
            where,
            ok=False,
            detail=(
                f"logged in, but folder(s) missing: {', '.join(missing)} "
                f"(the server has: {', '.join(sorted(existing))})"
            ),
        )
    return CheckResult(
        box.name, where, ok=True, detail=f"logged in; folders {', '.join(wanted)}; {idle}"
    )


def check_smtp(box: MailboxSettings) -> CheckResult:
    server, mailbox = box.smtp, box.name
    assert server is not None
    where = _where("SMTP", server)
    try:
        secret = resolve_secret(server)
        detail, refused = asyncio.run(
            _smtp_login(server, secret, box.address, team_recipients(box))
        )
    except KeepwordError as exc:
        return CheckResult(mailbox, where, ok=False, detail=_strip(str(exc), where))
    except ssl.SSLCertVerificationError as exc:
        reason = getattr(exc, "verify_message", None) or "verification failed"
        detail = f"TLS certificate of {server.host} not trusted ({reason})"
        return CheckResult(mailbox, where, ok=False, detail=detail)
    except aiosmtplib.SMTPAuthenticationError as exc:
        detail = f"login as {server.username} refused: {exc.code} {exc.message}"
        return CheckResult(mailbox, where, ok=False, detail=detail)
    except aiosmtplib.SMTPTimeoutError:
        return CheckResult(mailbox, where, ok=False, detail=f"timed out after {server.timeout:g} s")
    except (aiosmtplib.SMTPException, OSError) as exc:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.strerror:
            text = exc.strerror
        return CheckResult(mailbox, where, ok=False, detail=f"failed: {text}")
    return CheckResult(mailbox, where, ok=not refused, detail=detail)


async def _smtp_login(
    server: SmtpSettings, secret: Secret, sender: str, team: list[str]
) -> tuple[str, bool]:
    """(What went well, and what the relay refused; True if it refused anything for good.)"""
    context = None
    if server.tls is not TlsMode.PLAIN:
        context = ssl.create_default_context(cafile=str(server.ca_file) if server.ca_file else None)
    client = aiosmtplib.SMTP(
        hostname=server.host,
        port=server.effective_port(),
        use_tls=server.tls is TlsMode.IMPLICIT,
        start_tls=server.tls is TlsMode.STARTTLS,
        tls_context=context,
        timeout=server.timeout,
    )
    await client.connect()
    try:
        await client.ehlo()
        if not client.supports_extension("auth"):
            if server.tls is TlsMode.PLAIN:  # a local relay that needs no login
                done = "connected, EHLO ok; server offers no AUTH (local relay), not logging in"
            else:
                done = "connected, EHLO ok; server offers no AUTH"
        else:
            if secret.is_oauth2:
                await client.auth_xoauth2(server.username, secret.reveal())
            else:
                await client.login(server.username, secret.reveal())
            done = "connected, EHLO and login ok"
        replies = await _ask_recipients(client, sender, team)
        verdict, refused = recipients_verdict(sender, replies)
        return f"{done}; {verdict}", refused
    finally:
        try:
            await client.quit()
        except aiosmtplib.SMTPException:
            client.close()


async def _ask_recipients(
    client: aiosmtplib.SMTP, sender: str, team: list[str]
) -> dict[str, tuple[int, str]]:
    """The relay's reply to MAIL FROM (under `sender`) and to RCPT TO for each of `team`,
    then RSET: nothing is sent. A refused sender ends it (no recipient is asked)."""
    replies: dict[str, tuple[int, str]] = {}
    try:
        answer = await client.mail(sender)
    except aiosmtplib.SMTPResponseException as exc:
        return {sender: (exc.code, exc.message)}
    replies[sender] = (answer.code, answer.message)
    for address in team:
        try:
            answer = await client.rcpt(address)
        except aiosmtplib.SMTPResponseException as exc:
            replies[address] = (exc.code, exc.message)
        else:
            replies[address] = (answer.code, answer.message)
    await client.rset()
    return replies


def recipients_verdict(sender: str, replies: dict[str, tuple[int, str]]) -> tuple[str, bool]:
    """What the relay said of the sender and the team (first `sender`'s reply), and
    whether it refused any of them for good (5xx). A 4xx could not verify: said, not
    failed (a relay that checks later, greylisting)."""
    code, message = replies[sender]
    if code >= 500:
        return f"the relay refuses {sender} as sender: {code} {message}", True
    if code >= 400:
        return f"sender {sender} not verified now: {code} {message}", False
    team = {a: r for a, r in replies.items() if a != sender}
    if not team:
        return f"sender {sender} accepted", False
    said = {a: f"{a} ({c} {m})" for a, (c, m) in team.items()}
    refused = [said[a] for a, (c, m) in team.items() if c >= 500]
    unsure = [said[a] for a, (c, m) in team.items() if 400 <= c < 500]
    taken = len(team) - len(refused) - len(unsure)
    parts = [f"sender {sender} and {taken} of {len(team)} team address(es) accepted"]
    if refused:
        # An address the relay does not know is the config's; a policy refusal (relay
        # access denied) is the relay's settings for this sender.
        policy = any(not refuses_the_address(f"{c} {m}") for c, m in team.values() if c >= 500)
        hint = "the relay's settings for this sender" if policy else "the mailbox's team or lead"
        parts.append(f"refused for good: {', '.join(refused)} (check {hint})")
    if unsure:
        parts.append(f"not verified now: {', '.join(unsure)}")
    return "; ".join(parts), bool(refused)


def _strip(message: str, where: str) -> str:
    """Errors already name the server; the line names it once."""
    return message.removeprefix(f"{where}: ")
