"""How ImapSession maps library errors (no server needed: the mapping is pure)."""

from __future__ import annotations

import imaplib
import ssl

import pytest
from imapclient.exceptions import LoginError

from keepword.adapters.credentials import Secret
from keepword.adapters.imap import (
    ImapCommandError,
    ImapConnectionError,
    ImapFolderMissingError,
    ImapLoginError,
    ImapSession,
    ImapTlsError,
    _append_uid,
    _header_id,
    _is_change,
)
from keepword.config import ImapSettings, TlsMode

PASSWORD = "hunter2-Very-Secret"


def make_session() -> ImapSession:
    settings = ImapSettings(
        host="imap.example.com",
        username="support@example.com",
        password_env="KW_PW",
        tls=TlsMode.IMPLICIT,
    )
    return ImapSession(settings, Secret(PASSWORD))


@pytest.mark.parametrize(
    ("raised", "expected", "text"),
    [
        (LoginError(f"b'[AUTHENTICATIONFAILED] bad {PASSWORD}'"), ImapLoginError, "refused"),
        (imaplib.IMAP4.abort("socket error: EOF"), ImapConnectionError, "connection lost"),
        (ConnectionRefusedError(111, "Connection refused"), ImapConnectionError, "refused"),
        (TimeoutError(), ImapConnectionError, "timed out after 30 s"),
        (ssl.SSLError(1, "WRONG_VERSION_NUMBER"), ImapTlsError, "TLS failed"),
        (imaplib.IMAP4.error("b'[NONEXISTENT] Mailbox doesn'"), ImapFolderMissingError, "Nope"),
        (imaplib.IMAP4.error("b'[SERVERBUG] oops'"), ImapCommandError, "oops"),
    ],
)
def test_errors_are_mapped_and_name_the_server(
    raised: BaseException, expected: type[Exception], text: str
) -> None:
    imap = make_session()
    with pytest.raises(expected) as caught, imap._errors("STATUS Nope", folder="Nope"):
        raise raised
    message = str(caught.value)
    assert message.startswith("IMAP support@example.com at imap.example.com:993: ")
    assert text in message
    assert PASSWORD not in message
    assert caught.value.__cause__ is None  # the library error (maybe with secrets) is cut off


def test_certificate_failure_names_the_host() -> None:
    imap = make_session()
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "self-signed certificate"
    expected = r"certificate of imap\.example\.com not trusted \(self-signed certificate\)"
    with pytest.raises(ImapTlsError, match=expected), imap._errors("connect"):
        raise error


def test_missing_folder_only_when_a_folder_was_named() -> None:
    imap = make_session()
    with pytest.raises(ImapCommandError) as caught, imap._errors("LIST"):
        raise imaplib.IMAP4.error("b'[NONEXISTENT] no'")
    assert not isinstance(caught.value, ImapFolderMissingError)


def test_repr_shows_no_secret() -> None:
    assert PASSWORD not in repr(make_session())
    assert "support@example.com" in repr(make_session())


def test_commands_without_connection_raise() -> None:
    with pytest.raises(ImapConnectionError, match="not connected"):
        make_session().status("INBOX")


def test_append_uid() -> None:
    assert _append_uid(b"[APPENDUID 1795417447 3] Append completed.") == 3
    assert _append_uid(b"Append completed.") is None
    assert _append_uid(None) is None


def test_header_id_unfolds_and_strips() -> None:
    assert _header_id(b"Message-ID:\r\n <a.b@c>\r\n\r\n") == "a.b@c"
    assert _header_id(b"") == ""


def test_is_change() -> None:
    assert _is_change((3, b"EXISTS"))
    assert _is_change((2, b"EXPUNGE"))
    assert _is_change((1, b"FETCH", (b"FLAGS", (b"\\Seen",))))
    assert not _is_change((b"OK", b"Still here"))
    assert not _is_change(b"* 1 RECENT")
