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
