"""Blocking IMAP adapter over imapclient (callers run it in a worker thread).

Every imapclient, socket and TLS failure leaves this module as an `ImapError` (a
`MailboxError`) whose message names the account, the host and what failed, and never
the password. Reading never changes the mailbox: folders are EXAMINEd (read-only) and
bodies fetched with BODY.PEEK[], so `\\Seen` stays whatever people set. The two FETCHes
of an import's every message (its date, its body) read imaplib's answer directly: on
a big import imapclient's response parser held the GIL of the process that stores and
triages for seconds.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import os
import re
import select
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from types import TracebackType
from typing import Any, NoReturn, Self

from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from keepword.adapters.credentials import Secret
from keepword.config import ImapSettings, TlsMode
from keepword.errors import MailboxError

log = logging.getLogger(__name__)

STATUS_ITEMS = ("UIDNEXT", "UIDVALIDITY", "MESSAGES")
IMAPLIB_DEBUG = 1
# RFC822.SIZE of this many UIDs per UID FETCH: ~20 bytes of answer each.
SIZES_CHUNK = 5000
# One MULTIAPPEND (RFC 3502) carries at most this many bytes of messages.
MULTIAPPEND_BYTES = 8 * 1024 * 1024


class ImapError(MailboxError):
    """Something went wrong talking to an IMAP server."""


class ImapConnectionError(ImapError):
    """The server cannot be reached, or the connection broke or timed out."""


class ImapTlsError(ImapConnectionError):
    """TLS failed, e.g. the server's certificate is not trusted for its host name."""


class ImapLoginError(ImapError):
    """The server refused the user name and password (or token)."""


class ImapCommandError(ImapError):
    """The server answered NO/BAD to a command (e.g. a folder does not exist)."""


class ImapFolderMissingError(ImapCommandError):
    """The named folder does not exist."""


@dataclass(frozen=True)
class FolderStatus:
    uidvalidity: int
    uidnext: int
    messages: int


@dataclass(frozen=True)
class FetchedMessage:
    uid: int
    raw: bytes
    internaldate: datetime | None  # aware, UTC


@dataclass(frozen=True, slots=True)
class DatedMessage:
    """What a first import orders a folder by, read without its body."""

    uid: int
    size: int  # RFC822.SIZE
    internaldate: datetime | None  # aware, UTC
    date_header: bytes | None  # the message's Date header lines, as the server has them


class ImapSession:
    """One logged-in IMAP connection for one mailbox. Use as a context manager."""

    def __init__(self, settings: ImapSettings, secret: Secret) -> None:
        self.settings = settings
        self._secret = secret
        self._client: IMAPClient | None = None
        self._examined: str | None = None
        # interrupt(): another thread ends a wait_for_change at once (the daemon stops).
        self._interrupted = threading.Event()
        self._wake_lock = threading.Lock()
        self._wake: tuple[int, int] | None = None  # self-pipe (read, write)
        self.where = f"IMAP {settings.username} at {settings.host}:{settings.effective_port()}"

    def __repr__(self) -> str:
        state = "connected" if self._client else "closed"
        return f"<ImapSession {self.where} {state}>"

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- connection ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def commands(self) -> int:
        """IMAP commands (tags) sent on the current connection, login included."""
        if self._client is None:
            return 0
        return int(self._client._imap.tagnum)

    def connect(self) -> None:
        """Open the connection (implicit TLS, STARTTLS or plain) and log in."""
        if self._client is not None:
            return
        settings = self.settings
        tls = settings.tls
        context = self._ssl_context() if tls is not TlsMode.PLAIN else None
        log.debug("connecting to %s (tls=%s)", self.where, tls.value)
        with self._errors("connect"):
            client = IMAPClient(
                settings.host,
                port=settings.effective_port(),
                ssl=tls is TlsMode.IMPLICIT,
                ssl_context=context,
                timeout=settings.timeout,
            )
        self._client = client
        client.normalise_times = False  # keep INTERNALDATE's zone; we convert to UTC
        # imapclient sets imaplib's debug level to 5, at which imaplib formats every
        # untagged response with %r before handing it to a (disabled) logger: two text
        # copies of each fetched body. Level 1 keeps the short line log and errors.
        client._imap.debug = IMAPLIB_DEBUG
        try:
            if tls is TlsMode.STARTTLS:
                self._starttls(client, context)
            self._login(client)
            # imapclient asks CAPABILITY lazily, in the middle of the first poll otherwise.
            with self._errors("CAPABILITY"):
                client.capabilities()
        except BaseException:
            self._drop()
            raise
        log.info("logged in: %s", self.where)

    def _ssl_context(self) -> ssl.SSLContext:
        ca_file = self.settings.ca_file
        try:
            return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise ImapTlsError(f"{self.where}: cannot load ca_file {ca_file}: {exc}") from None

    def _starttls(self, client: IMAPClient, context: ssl.SSLContext | None) -> None:
        with self._errors("CAPABILITY"):
            offered = client.has_capability("STARTTLS")
        if not offered:
            raise ImapTlsError(f"{self.where}: server does not offer STARTTLS")
        with self._errors("STARTTLS"):
            client.starttls(context)

    def _login(self, client: IMAPClient) -> None:
        user = self.settings.username
        with self._errors("login"):
            if self._secret.is_oauth2:
                client.oauth2_login(user, self._secret.reveal())
            else:
                client.login(user, self._secret.reveal())

    def close(self) -> None:
        """Log out and close; never raises (the connection may already be gone)."""
        self._close_wake()
        client, self._client = self._client, None
        self._examined = None
        if client is None:
            return
        try:
            client.logout()
        except Exception:  # closing a broken connection must not fail
            with contextlib.suppress(Exception):
                client.shutdown()

    def _drop(self) -> None:
        """Forget a broken connection without talking to the server."""
        client, self._client = self._client, None
        self._examined = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.shutdown()

    def _require(self) -> IMAPClient:
        if self._client is None:
            raise ImapConnectionError(f"{self.where}: not connected")
        return self._client

    # -- commands -----------------------------------------------------------------------

    def capabilities(self) -> frozenset[str]:
        client = self._require()
        with self._errors("CAPABILITY"):
            raw = client.capabilities()
        return frozenset(_text(c).upper() for c in raw)

    def status(self, folder: str) -> FolderStatus:
        """UIDVALIDITY, UIDNEXT and MESSAGES in one STATUS round trip (cheapest poll).

        Dovecot answers STATUS of the selected folder from the session's own view, which
        misses mail that arrived since; then a NOOP goes first (two round trips). Call
        `unselect()` after fetching to keep idle polls at one command.
        """
        client = self._require()
        if self._examined == folder:
            self.noop()
        with self._errors(f"STATUS {folder}", folder=folder):
            data = client.folder_status(folder, STATUS_ITEMS)
        try:
            return FolderStatus(
                uidvalidity=int(data[b"UIDVALIDITY"]),
                uidnext=int(data[b"UIDNEXT"]),
                messages=int(data[b"MESSAGES"]),
            )
        except (KeyError, TypeError, ValueError):
            raise ImapCommandError(
                f"{self.where}: STATUS {folder} answer lacks UIDVALIDITY/UIDNEXT/MESSAGES"
            ) from None

    def examine(self, folder: str) -> None:
        """Select folder read-only (EXAMINE).

        Always sent, even for the folder already selected: Dovecot does not show
        messages that arrived since in a UID SEARCH without a re-sync (~0.4 ms).
        """
        self._examine(folder)

    def _examine(self, folder: str) -> dict[bytes, Any]:
        client = self._require()
        with self._errors(f"EXAMINE {folder}", folder=folder):
            response: dict[bytes, Any] = client.select_folder(folder, readonly=True)
        self._examined = folder
        return response

    def wait_for_change(self, folder: str, timeout: float, known_uidnext: int = 0) -> bool:
        """IDLE on folder for up to `timeout` seconds; True once the server reports a change.

        Changes are new (EXISTS), expunged (EXPUNGE) or re-flagged (FETCH) messages. Mail
        that arrived after the caller's last poll but before IDLE began is caught by
        `known_uidnext` (the UIDNEXT the caller has seen): a higher UIDNEXT at EXAMINE
        returns True at once. Dovecot reports arrivals within ~0.5 s (its notify timer).
        The wait stays in one IDLE (no command is sent while it lasts) until the server
        speaks, `timeout` passes or another thread calls `interrupt()`; then DONE.
        Raises ImapCommandError if the server does not offer IDLE.
        """
        if "IDLE" not in self.capabilities():
            raise ImapCommandError(f"{self.where}: server does not offer IDLE")
        if self._interrupted.is_set():
            return False
        selected = self._examine(folder)
        uidnext = int(selected.get(b"UIDNEXT", 0) or 0)
        if known_uidnext and uidnext > known_uidnext:
            return True
        client = self._require()
        wake = self._wake_fd()
        deadline = time.monotonic() + timeout
        responses: list[Any] = []
        with self._errors(f"IDLE on {folder}", folder=folder):
            client.idle()
            try:
                while not any(_is_change(r) for r in responses):
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._readable(client, wake, left):
                        break
                    said = client.idle_check(timeout=0)
                    if not said:
                        break  # readable yet silent: the server hung up; DONE will tell
                    responses.extend(said)
            finally:
                _text_done, more = client.idle_done()
        return any(_is_change(r) for r in [*responses, *more])

    def _readable(self, client: IMAPClient, wake: int, timeout: float) -> bool:
        """Wait until the server sends something (True) or an interrupt / timeout (False)."""
        sock = client.socket()
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # already decrypted, the socket itself stays quiet
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLPRI)
        poller.register(wake, select.POLLIN)
        events = dict(poller.poll(timeout * 1000))
        if self._interrupted.is_set() or wake in events:
            return False
        return bool(events)

    def interrupt(self) -> None:
        """End the current (or next) `wait_for_change` at once. Safe from any thread."""
        self._interrupted.set()
        with self._wake_lock:
            if self._wake is not None:
                with contextlib.suppress(OSError):
                    os.write(self._wake[1], b"!")

    def _wake_fd(self) -> int:
        with self._wake_lock:
            if self._wake is None:
                read, write = os.pipe()
                os.set_blocking(write, False)
                self._wake = (read, write)
            return self._wake[0]

    def _close_wake(self) -> None:
        with self._wake_lock:
            wake, self._wake = self._wake, None
        for fd in wake or ():
            with contextlib.suppress(OSError):
                os.close(fd)

    def unselect(self) -> None:
        """Leave the examined folder (UNSELECT, or CLOSE: read-only, so nothing expunged)."""
        client = self._require()
        if self._examined is None:
            return
        folder, self._examined = self._examined, None
        with self._errors(f"UNSELECT {folder}"):
            if client.has_capability("UNSELECT"):
                client.unselect_folder()
            else:
                client.close_folder()

    @property
    def selected_folder(self) -> str | None:
        """The folder currently EXAMINEd, if any."""
        return self._examined

    def new_uids(self, folder: str, after_uid: int) -> list[int]:
        """UIDs in folder greater than after_uid, ascending.

        `UID SEARCH UID n:*` always matches the highest UID even when it is below n
        (RFC 3501: `*` is the largest UID in use), so the answer is filtered here.
        """
        self.examine(folder)
        client = self._require()
        with self._errors(f"UID SEARCH in {folder}", folder=folder):
            found = client.search(["UID", f"{after_uid + 1}:*"])
        return sorted(int(uid) for uid in found if int(uid) > after_uid)

    def fetch(self, uids: Sequence[int], folder: str | None = None) -> list[FetchedMessage]:
        """Raw bytes + INTERNALDATE of uids in the examined folder (or `folder`), in the
        order asked (a first import asks oldest first: pipeline.history).

        BODY.PEEK[] on an EXAMINEd folder: never sets `\\Seen`. Expunged UIDs are skipped.
        Fetched in batches of settings.fetch_batch.
        """
        if folder is not None:
            self.examine(folder)
        client = self._require()
        if self._examined is None:
            raise ImapCommandError(f"{self.where}: fetch without a folder (call new_uids first)")
        result: list[FetchedMessage] = []
        batch = self.settings.fetch_batch
        ordered = list(dict.fromkeys(uids))  # each once, as asked
        for start in range(0, len(ordered), batch):
            chunk = ordered[start : start + batch]
            with self._errors(f"UID FETCH in {self._examined}", folder=self._examined):
                found = self._fetch_raw(client, chunk)
            result.extend(found[uid] for uid in chunk if uid in found)
        return result

    def _fetch_raw(self, client: IMAPClient, uids: Sequence[int]) -> dict[int, FetchedMessage]:
        """UID -> message of `uids`, read over imaplib's raw FETCH (_fetched): reading it
        through imapclient cost ~3 CPU-s for 20,000 messages, this ~1, on the GIL of the
        process that stores and triages them (docs/benchmarks.md, "History into cases").
        What this reading leaves out (expunged meanwhile, or an answer it cannot read: a
        body sent as a quoted string) is asked again through imapclient, so nothing it
        could read is lost."""
        found = _fetched(_raw_fetch(client, sorted(uids), _FETCH_ITEMS))
        rest = [uid for uid in uids if uid not in found]
        if rest:
            for uid, item in client.fetch(rest, ["BODY.PEEK[]", "INTERNALDATE"]).items():
                if b"BODY[]" in item:
                    raw, when = item[b"BODY[]"], item.get(b"INTERNALDATE")
                    found[uid] = FetchedMessage(uid=uid, raw=bytes(raw), internaldate=_utc(when))
        return found

    def message_sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """RFC822.SIZE of uids in the examined folder; expunged UIDs are left out.

        Cheap (no body is read): lets the caller cap a fetch batch in bytes.
        """
        client = self._require()
        if self._examined is None:
            raise ImapCommandError(f"{self.where}: sizes without a folder (call new_uids first)")
        sizes: dict[int, int] = {}
        ordered = sorted(set(uids))
        for start in range(0, len(ordered), SIZES_CHUNK):
            chunk = ordered[start : start + SIZES_CHUNK]
            with self._errors(f"UID FETCH RFC822.SIZE in {self._examined}", folder=self._examined):
                data = client.fetch(chunk, ["RFC822.SIZE"])
            for uid, item in data.items():
                size = item.get(b"RFC822.SIZE")
                if isinstance(size, int):
                    sizes[int(uid)] = size
        return sizes

    def message_dates(self, uids: Sequence[int]) -> list[DatedMessage]:
        """Size, INTERNALDATE and Date header of uids in the examined folder, in UID
        order; expunged UIDs are left out (as are answers this cannot read).

        Read over imaplib's raw FETCH: imapclient's response parser costs ~1.1 s of CPU
        for 20,000 messages, this ~0.3 s (docs/benchmarks.md, "History into cases").
        """
        client = self._require()
        if self._examined is None:
            raise ImapCommandError(f"{self.where}: dates without a folder (call new_uids first)")
        dated: list[DatedMessage] = []
        ordered = sorted(set(uids))
        for start in range(0, len(ordered), SIZES_CHUNK):
            chunk = ordered[start : start + SIZES_CHUNK]
            with self._errors(f"UID FETCH INTERNALDATE in {self._examined}", folder=self._examined):
                data = _raw_fetch(client, chunk, _DATED_ITEMS)
            dated.extend(_dated(data))
        return sorted(dated, key=lambda message: message.uid)

    def has_message_id(self, folder: str, message_id: str) -> bool:
        """Is a message with exactly this Message-ID in folder?

        UID SEARCH HEADER matches substrings (`<1@x>` is found in `<a1@x>` without the
        brackets), so hits are confirmed by fetching their Message-ID header: one more
        round trip, only when something was found.
        """
        wanted = _normal_id(message_id)
        if not wanted:
            return False
        self.examine(folder)
        client = self._require()
        charset = None if message_id.isascii() else "UTF-8"
        with self._errors(f"UID SEARCH HEADER in {folder}", folder=folder):
            found = client.search(["HEADER", "Message-ID", wanted], charset)
        if not found:
            return False
        with self._errors(f"UID FETCH Message-ID in {folder}", folder=folder):
            data = client.fetch(found[:50], ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
        return any(
            _header_id(item.get(b"BODY[HEADER.FIELDS (MESSAGE-ID)]", b"")) == wanted
            for item in data.values()
        )

    def append(self, folder: str, raw: bytes, flags: Sequence[str] = ("\\Seen",)) -> int | None:
        """APPEND raw to folder; returns the new UID when the server reports APPENDUID."""
        client = self._require()
        with self._errors(f"APPEND to {folder}", folder=folder):
            response = client.append(folder, raw, flags=tuple(flags))
        return _append_uid(response)

    def append_many(
        self, folder: str, raws: Sequence[bytes], flags: Sequence[str] = ("\\Seen",)
    ) -> int:
        """APPEND every raw to folder, in order, on this connection; returns how many went in.

        One MULTIAPPEND (RFC 3502) per ~8 MB where the server offers it: all of a command's
        messages go in or none does. Else one APPEND each; the count then tells how far
        it got before an error (raised only when nothing went in).
        """
        client = self._require()
        if not raws:
            return 0
        if not client.has_capability("MULTIAPPEND"):
            return self._append_each(folder, raws, flags)
        done = 0
        for chunk in _byte_chunks(raws, MULTIAPPEND_BYTES):
            messages = [{"msg": raw, "flags": tuple(flags)} for raw in chunk]
            try:
                with self._errors(f"MULTIAPPEND to {folder}", folder=folder):
                    client.multiappend(folder, messages)
            except ImapError:
                if done:
                    return done
                raise
            done += len(chunk)
        return done

    def _append_each(self, folder: str, raws: Sequence[bytes], flags: Sequence[str]) -> int:
        for done, raw in enumerate(raws):
            try:
                self.append(folder, raw, flags)
            except ImapError:
                if done:
                    return done
                raise
        return len(raws)

    def ensure_folder(self, folder: str) -> None:
        """Create (and subscribe) folder unless it exists."""
        client = self._require()
        with self._errors(f"LIST {folder}"):
            if client.folder_exists(folder):
                return
        with self._errors(f"CREATE {folder}"):
            try:
                client.create_folder(folder)
            except imaplib.IMAP4.error as exc:
                if "ALREADYEXISTS" not in str(exc).upper():
                    raise
        with contextlib.suppress(ImapCommandError), self._errors(f"SUBSCRIBE {folder}"):
            client.subscribe_folder(folder)
        log.info("%s: created folder %s", self.where, folder)

    def folders(self) -> list[str]:
        """Names of all folders (LIST "" *)."""
        client = self._require()
        with self._errors("LIST"):
            listing = client.list_folders()
        return [_text(name) for _flags, _sep, name in listing]

    def noop(self) -> None:
        """Keep-alive / liveness check."""
        client = self._require()
        with self._errors("NOOP"):
            client.noop()

    # -- error mapping ------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str, folder: str | None = None) -> Iterator[None]:
        try:
            yield
        except ImapError:
            raise
        except LoginError as exc:
            self._drop()
            self._raise(ImapLoginError, f"login as {self.settings.username} refused", exc)
        except ssl.SSLCertVerificationError as exc:
            self._drop()
            reason = (
                getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or "failed"
            )
            self._raise(
                ImapTlsError,
                f"TLS certificate of {self.settings.host} not trusted ({reason})",
                None,
            )
        except ssl.SSLError as exc:
            self._drop()
            self._raise(
                ImapTlsError, f"TLS failed during {what}", getattr(exc, "reason", None) or exc
            )
        except TimeoutError:
            self._drop()
            self._raise(
                ImapConnectionError, f"{what} timed out after {self.settings.timeout:g} s", None
            )
        except imaplib.IMAP4.abort as exc:
            self._drop()
            self._raise(ImapConnectionError, f"connection lost during {what}", exc)
        except OSError as exc:
            self._drop()
            self._raise(ImapConnectionError, f"{what} failed", exc.strerror or exc)
        except imaplib.IMAP4.error as exc:
            text = _clean(exc)
            if folder is not None and _is_missing_folder(text):
                self._raise(ImapFolderMissingError, f"folder {folder!r} does not exist", None)
            self._raise(ImapCommandError, f"{what} refused", text)

    def _raise(self, kind: type[ImapError], message: str, detail: object) -> NoReturn:
        text = f"{self.where}: {message}"
        if detail is not None and str(detail):
            text += f": {_clean(detail)}"
        secret = self._secret.reveal()
        if secret:
            text = text.replace(secret, "***")  # belt and braces: servers echo odd things
        log.info("%s", text)  # the caller decides how loud: it gets the exception
        raise kind(text) from None


def _raw_fetch(client: IMAPClient, uids: Sequence[int], items: str) -> list[Any]:
    """imaplib's answer to UID FETCH `items` of ascending `uids`, unparsed (a refusal
    raised as imaplib's error, which ImapSession._errors names)."""
    kind, data = client._imap.uid("FETCH", uid_set(uids), items)
    if kind != "OK":
        raise imaplib.IMAP4.error(data[-1] if data else kind)
    return list(data)


_DATED_ITEMS = "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (DATE)])"
_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_INTERNALDATE = re.compile(rb'\bINTERNALDATE "([^"]*)"')


_FETCH_ITEMS = "(UID INTERNALDATE BODY.PEEK[])"
# The head of a message's answer to _FETCH_ITEMS, up to its body's literal.
_BODY_LITERAL = re.compile(rb"\bBODY\[\] \{\d+\}$")


def _fetched(data: Sequence[Any]) -> dict[int, FetchedMessage]:
    """imaplib's answer to a FETCH of _FETCH_ITEMS: per message a (head, body) tuple, the
    head ending in the body's literal, then the rest of its line (the items a server
    sends after the body). Anything else is left out: unsolicited updates (no body), a
    body sent as a quoted string or NIL, a shape this does not know."""
    found: dict[int, FetchedMessage] = {}
    for index, part in enumerate(data):
        if not isinstance(part, tuple) or len(part) != 2:
            continue
        head, body = part
        if not (isinstance(head, bytes) and isinstance(body, bytes)):
            continue
        if _BODY_LITERAL.search(head) is None:
            continue
        rest = data[index + 1] if index + 1 < len(data) else b""
        line = head + b" " + (rest if isinstance(rest, bytes) else b"")
        uid, internal = _UID.search(line), _INTERNALDATE.search(line)
        if uid is not None:
            when = _internaldate(internal[1]) if internal else None
            found[int(uid[1])] = FetchedMessage(uid=int(uid[1]), raw=body, internaldate=when)
    return found


def _dated(data: Sequence[Any]) -> Iterator[DatedMessage]:
    """imaplib's answer to a FETCH of _DATED_ITEMS: (head, Date header literal) tuples,
    or a bare line where the server sent no literal (an empty header as "")."""
    for part in data:
        head, literal = (part[0], part[1]) if isinstance(part, tuple) else (part, None)
        if not isinstance(head, bytes):
            continue
        uid, size = _UID.search(head), _SIZE.search(head)
        if uid is None or size is None:
            continue
        internal = _INTERNALDATE.search(head)
        yield DatedMessage(
            uid=int(uid[1]),
            size=int(size[1]),
            internaldate=_internaldate(internal[1]) if internal else None,
            date_header=literal if isinstance(literal, bytes) and literal.strip() else None,
        )


_DATE_TIME = re.compile(
    rb"\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"
)
_MONTHS = {
    m: n
    for n, m in enumerate(
        (
            b"jan",
            b"feb",
            b"mar",
            b"apr",
            b"may",
            b"jun",
            b"jul",
            b"aug",
            b"sep",
            b"oct",
            b"nov",
            b"dec",
        ),
        1,
    )
}


def _internaldate(value: bytes) -> datetime | None:
    """b" 4-Dec-2026 07:02:30 +0000" (RFC 3501 date-time) -> aware UTC, or None. (Not
    strptime: its month names follow the process's locale.)"""
    found = _DATE_TIME.fullmatch(value)
    month = _MONTHS.get(found[2].lower()) if found else None
    if found is None or month is None:
        return None
    offset = timedelta(hours=int(found[8]), minutes=int(found[9]))
    try:
        local = datetime(
            int(found[3]),
            month,
            int(found[1]),
            int(found[4]),
            int(found[5]),
            int(found[6]),
            tzinfo=timezone(-offset if found[7] == b"-" else offset),
        )
    except ValueError:
        return None
    return local.astimezone(UTC)


def uid_set(uids: Sequence[int]) -> str:
    """An RFC 3501 sequence set of ascending uids, runs as ranges: "1:5,9,12:14"."""
    runs: list[str] = []
    start = previous = None
    for uid in uids:
        if previous is not None and uid == previous + 1:
            previous = uid
            continue
        if start is not None:
            runs.append(f"{start}:{previous}" if previous != start else str(start))
        start = previous = uid
    if start is not None:
        runs.append(f"{start}:{previous}" if previous != start else str(start))
    return ",".join(runs)


def _clean(detail: object) -> str:
    """imaplib errors carry a repr of bytes: b'[AUTHENTICATIONFAILED] ...' -> plain text."""
    text = str(detail)
    if text.startswith(("b'", 'b"')) and text.endswith(("'", '"')):
        text = text[2:-1]
    return text


def _normal_id(message_id: str) -> str:
    """'<A@b>' and ' A@b ' are the same Message-ID for lookups."""
    return message_id.strip().strip("<>").strip()


def _header_id(header: object) -> str:
    if not isinstance(header, bytes):
        return ""
    text = header.decode("utf-8", "replace")
    _name, _sep, value = text.partition(":")
    return _normal_id(" ".join(value.split()))  # unfold


def _byte_chunks(raws: Sequence[bytes], limit: int) -> Iterator[Sequence[bytes]]:
    """Consecutive runs of raws of at most `limit` bytes (a larger one goes alone)."""
    start, size = 0, 0
    for index, raw in enumerate(raws):
        if index > start and size + len(raw) > limit:
            yield raws[start:index]
            start, size = index, 0
        size += len(raw)
    if start < len(raws):
        yield raws[start:]


def _is_change(response: object) -> bool:
    # Untagged IDLE responses look like (3, b'EXISTS') or (2, b'FETCH', (...)).
    return (
        isinstance(response, tuple)
        and len(response) >= 2
        and response[1] in {b"EXISTS", b"EXPUNGE", b"FETCH"}
    )


def _is_missing_folder(text: str) -> bool:
    upper = text.upper()
    return "NONEXISTENT" in upper or "MAILBOX DOESN'T EXIST" in upper or "NO SUCH" in upper


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _utc(value: object) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:  # should not happen with normalise_times off
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _append_uid(response: object) -> int | None:
    # b'[APPENDUID 1795417447 3] Append completed.' (RFC 4315 UIDPLUS)
    if not isinstance(response, bytes) or not response.startswith(b"[APPENDUID "):
        return None
    try:
        return int(response.split(b"]", 1)[0].split()[2])
    except (IndexError, ValueError):
        return None
