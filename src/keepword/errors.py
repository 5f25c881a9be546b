"""One exception root for everything keepword raises on purpose."""

from __future__ import annotations


class KeepwordError(Exception):
    """Root of keepword's own errors: the CLI prints these without a traceback."""


class ConfigError(KeepwordError):
    """The configuration file is missing, unreadable or invalid.

    `problems` holds one human line per problem, each naming the file and the key.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class SecretError(KeepwordError):
    """A password or token could not be obtained (file, command, env, credential)."""


class MailboxError(KeepwordError):
    """An IMAP or SMTP server could not be reached, logged in to, or used."""


class StoreError(KeepwordError):
    """The database is unreachable or its schema is not what this version expects."""


class StaleCaseError(StoreError):
    """A case changed between reading it and saving a decision made on it: decide again."""


class DeliveryUnavailable(MailboxError):  # noqa: N818 (reads as a state: "delivery unavailable")
    """The SMTP relay cannot be reached or refuses the login: the outbox waits.

    Raised by the drain after it left every row pending, so the daemon backs off that
    job (and `run --once` exits non-zero) instead of reporting success.
    """


class StoreBusyError(StoreError):
    """Another keepword process already writes this store (the writer lock is held)."""
