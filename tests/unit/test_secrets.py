"""Secret sources: file, command, env, systemd credential, inline, OAuth2 token command."""

from __future__ import annotations

import pickle
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

from keepword.adapters.credentials import Secret, resolve_secret
from keepword.config import Credentials
from keepword.errors import SecretError

SECRET = "s3cr3t-Pa55 with spaces"
PY = shlex.quote(sys.executable)


def creds(**source: Any) -> Credentials:
    return Credentials(username="support@example.com", **source)


def fails(credentials: Credentials, **kwargs: Any) -> str:
    with pytest.raises(SecretError) as caught:
        resolve_secret(credentials, **kwargs)
    message = str(caught.value)
    assert SECRET not in message
    assert "support@example.com" in message
    return message


def test_secret_never_shows_its_value() -> None:
    secret = Secret(SECRET)
    assert SECRET not in repr(secret)
    assert SECRET not in str(secret)
    assert SECRET not in f"{secret}"
    assert SECRET not in repr([secret])
    assert repr(secret) == "Secret('***')"
    assert secret.reveal() == SECRET
    assert not secret.is_oauth2


def test_secret_cannot_be_pickled() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(Secret(SECRET))


def test_secret_equality_compares_value_and_kind() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != Secret("a", is_oauth2=True)


def test_file_strips_exactly_one_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(SECRET + "\n")
    assert resolve_secret(creds(password_file=path)).reveal() == SECRET
    path.write_text(SECRET + "\r\n")
    assert resolve_secret(creds(password_file=path)).reveal() == SECRET
    path.write_text(SECRET + "\n\n")
    assert resolve_secret(creds(password_file=path)).reveal() == SECRET + "\n"
    path.write_text(" " + SECRET)
    assert resolve_secret(creds(password_file=path)).reveal() == " " + SECRET


def test_file_source_is_named_not_shown(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(SECRET)
    secret = resolve_secret(creds(password_file=path))
    assert str(path) in secret.source
    assert SECRET not in secret.source


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    assert str(path) in fails(creds(password_file=path))


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("\n")
    assert "empty" in fails(creds(password_file=path))


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert str(tmp_path) in fails(creds(password_file=tmp_path))


def test_env_variable() -> None:
    secret = resolve_secret(creds(password_env="KW_PW"), environ={"KW_PW": SECRET})
    assert secret.reveal() == SECRET
    assert "KW_PW" in fails(creds(password_env="KW_PW"), environ={})
    assert "empty" in fails(creds(password_env="KW_PW"), environ={"KW_PW": ""})


def test_systemd_credential(tmp_path: Path) -> None:
    (tmp_path / "imap-pw").write_text(SECRET + "\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    secret = resolve_secret(creds(password_credential="imap-pw"), environ=env)
    assert secret.reveal() == SECRET
    assert "imap-other" in fails(creds(password_credential="imap-other"), environ=env)
    assert "CREDENTIALS_DIRECTORY" in fails(creds(password_credential="imap-pw"), environ={})
    assert "not a credential name" in fails(creds(password_credential="../imap-pw"), environ=env)


def test_inline_password() -> None:
    assert resolve_secret(creds(password=SECRET)).reveal() == SECRET


def test_command_first_line_of_stdout() -> None:
    script = f"print({SECRET!r}); print('second line')"
    command = f"{PY} -c {shlex.quote(script)}"
    secret = resolve_secret(creds(password_command=command))
    assert secret.reveal() == SECRET
    assert not secret.is_oauth2


def test_command_runs_without_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    command = f"{PY} -c 'print(1)' ; touch {marker}"
    # No shell: ';' and 'touch' are mere arguments to python, the marker is never made.
    resolve_secret(creds(password_command=command))
    assert not marker.exists()


def test_failing_command_reports_status_but_never_output() -> None:
    script = f"import sys; print({SECRET!r}); print({SECRET!r}, file=sys.stderr); sys.exit(3)"
    message = fails(creds(password_command=f"{PY} -c {shlex.quote(script)}"))
    assert "status 3" in message


def test_command_not_found() -> None:
    message = fails(creds(password_command=f"/nonexistent/kw-pass {SECRET.split()[0]}"))
    assert "/nonexistent/kw-pass" in message
    assert "not found" in message


def test_command_timeout() -> None:
    command = f"{PY} -c 'import time; time.sleep(5)'"
    assert "did not finish" in fails(creds(password_command=command), timeout=0.3)


def test_command_printing_nothing() -> None:
    assert "printed nothing" in fails(creds(password_command=f"{PY} -c 'pass'"))


def test_unbalanced_quotes() -> None:
    assert "cannot split" in fails(creds(password_command="pass 'show"))


def test_command_gets_the_given_environment() -> None:
    command = f"{PY} -c 'import os; print(os.environ[\"KW_TOKEN\"])'"
    secret = resolve_secret(creds(password_command=command), environ={"KW_TOKEN": SECRET})
    assert secret.reveal() == SECRET


def test_oauth2_token_command_marks_the_secret() -> None:
    command = f"{PY} -c 'print(\"ya29.token\")'"
    secret = resolve_secret(creds(oauth2_token_command=command))
    assert secret.is_oauth2
    assert secret.reveal() == "ya29.token"
    assert "ya29" not in repr(secret)


def test_a_resolved_secret_is_masked_in_log_lines(tmp_path: Path) -> None:
    import io
    import logging

    from keepword.adapters.logs import forget_secrets, setup_logging

    stream = io.StringIO()
    handler = setup_logging("INFO", stream=stream, journal=False)
    try:
        secret = Secret("correct-horse-battery")
        logging.getLogger("keepword.test").info("oops %s", secret.reveal())
    finally:
        logging.getLogger().removeHandler(handler)
        forget_secrets()
    assert "correct-horse-battery" not in stream.getvalue()
    assert "oops" in stream.getvalue()
