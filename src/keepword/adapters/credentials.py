"""Passwords and OAuth2 tokens: resolved from the configured source, never shown.

Sources (exactly one per server, see config.Credentials): a file, a command, an
environment variable, a systemd credential, an inline password, or a command printing
an OAuth2 access token. Error messages name the source (file, variable, program) but
never its content or the command's output.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from keepword.adapters.logs import register_secret
from keepword.config import Credentials
from keepword.errors import SecretError

log = logging.getLogger(__name__)

COMMAND_TIMEOUT: Final = 30.0
CREDENTIALS_DIR_ENV: Final = "CREDENTIALS_DIRECTORY"


class Secret:
    """A password or token. `repr`/`str` never show it; call `reveal()` where it is used."""

    __slots__ = ("_value", "is_oauth2", "source")

    def __init__(self, value: str, *, is_oauth2: bool = False, source: str = "") -> None:
        self._value = value
        self.is_oauth2 = is_oauth2
        self.source = source  # a description such as "password_file /etc/kw/pw", never content
        register_secret(value)  # last line of defence: the log formatter masks it

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and (self._value, self.is_oauth2) == (
            other._value,
            other.is_oauth2,
        )

    def __hash__(self) -> int:
        return hash((self._value, self.is_oauth2))

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a Secret is not picklable")


def resolve_secret(
    credentials: Credentials,
    *,
    environ: Mapping[str, str] | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> Secret:
    """Fetch the secret of one server's credentials; raise SecretError saying what failed."""
    env = os.environ if environ is None else environ
    user = credentials.username
    if credentials.password is not None:
        return Secret(credentials.password, source="inline password")
    if credentials.password_file is not None:
        return _from_file(credentials.password_file, "password_file", user)
    if credentials.password_env is not None:
        return _from_env(credentials.password_env, env, user)
    if credentials.password_credential is not None:
        return _from_credential(credentials.password_credential, env, user)
    if credentials.password_command is not None:
        value = _run(credentials.password_command, "password_command", user, env, timeout)
        return Secret(value, source="password_command")
    if credentials.oauth2_token_command is not None:
        value = _run(credentials.oauth2_token_command, "oauth2_token_command", user, env, timeout)
        return Secret(value, is_oauth2=True, source="oauth2_token_command")
    raise SecretError(f"no password source configured for {user}")  # config forbids this


def _strip_newline(text: str) -> str:
    """Editors and `echo` add one trailing newline; anything else is part of the secret."""
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


def _from_file(path: Path, kind: str, user: str) -> Secret:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretError(f"{kind} for {user}: {path} does not exist") from None
    except PermissionError:
        raise SecretError(
            f"{kind} for {user}: {path} is not readable (permission denied)"
        ) from None
    except UnicodeDecodeError:
        raise SecretError(f"{kind} for {user}: {path} is not UTF-8 text") from None
    except OSError as exc:
        raise SecretError(f"{kind} for {user}: cannot read {path}: {exc.strerror}") from None
    value = _strip_newline(text)
    if not value:
        raise SecretError(f"{kind} for {user}: {path} is empty")
    if _world_readable(path):
        log.warning("%s for %s: %s is readable by every user; chmod 600 it", kind, user, path)
    return Secret(value, source=f"{kind} {path}")


def _world_readable(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & 0o004)
    except OSError:
        return False


def _from_env(name: str, env: Mapping[str, str], user: str) -> Secret:
    value = env.get(name)
    if value is None:
        raise SecretError(f"password_env for {user}: environment variable {name} is not set")
    if not value:
        raise SecretError(f"password_env for {user}: environment variable {name} is empty")
    return Secret(value, source=f"password_env {name}")


def _from_credential(name: str, env: Mapping[str, str], user: str) -> Secret:
    directory = env.get(CREDENTIALS_DIR_ENV)
    if not directory:
        raise SecretError(
            f"password_credential for {user}: ${CREDENTIALS_DIR_ENV} is not set "
            f"(run under systemd with LoadCredential={name}:...)"
        )
    if "/" in name or name in {"", ".", ".."}:
        raise SecretError(f"password_credential for {user}: {name!r} is not a credential name")
    return _from_file(Path(directory) / name, "password_credential", user)


def _run(command: str, kind: str, user: str, env: Mapping[str, str], timeout: float) -> str:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise SecretError(f"{kind} for {user}: cannot split the command line: {exc}") from None
    if not argv:
        raise SecretError(f"{kind} for {user}: the command is empty")
    program = argv[0]  # only the program is named in errors: arguments may be sensitive
    try:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=dict(env),
            check=False,
        )
    except FileNotFoundError:
        raise SecretError(f"{kind} for {user}: program {program!r} not found") from None
    except PermissionError:
        raise SecretError(f"{kind} for {user}: program {program!r} is not executable") from None
    except subprocess.TimeoutExpired:
        raise SecretError(
            f"{kind} for {user}: {program!r} did not finish in {timeout:g} s"
        ) from None
    except OSError as exc:
        raise SecretError(f"{kind} for {user}: cannot run {program!r}: {exc.strerror}") from None
    if result.returncode != 0:
        # Its output may contain the secret or parts of it: report the status only.
        raise SecretError(f"{kind} for {user}: {program!r} exited with status {result.returncode}")
    lines = result.stdout.decode("utf-8", errors="replace").splitlines()
    value = lines[0].rstrip("\r") if lines else ""
    if not value:
        raise SecretError(f"{kind} for {user}: {program!r} printed nothing")
    return value
