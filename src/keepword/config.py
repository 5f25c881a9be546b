"""TOML configuration -> validated, frozen settings.

Every problem is reported as `FILE: KEY: what is wrong`, all at once, and unknown keys
are errors so that a typo never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from datetime import date, time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from keepword.errors import ConfigError
from keepword.trust_settings import TrustSettings

DEFAULT_CONFIG_PATH = Path("/etc/keepword/keepword.toml")
DEFAULT_STATE_DIR = Path("/var/lib/keepword")
CONFIG_ENV = "KEEPWORD_CONFIG"

_ADDRESS_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")
_HOURS_RE = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _check_address(value: str) -> str:
    if not _ADDRESS_RE.match(value):
        raise ValueError(f"{value!r} is not an e-mail address")
    return value.lower()


def _check_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r} (use an IANA name such as Europe/Berlin)"
        ) from None
    return value


Address = Annotated[str, Field(min_length=3)]


class TlsMode(StrEnum):
    IMPLICIT = "implicit"
    STARTTLS = "starttls"
    PLAIN = "plain"


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Credentials(_Strict):
    """Where a server's password or OAuth2 token comes from. Exactly one source."""

    username: str = Field(min_length=1)
    password_file: Path | None = None
    password_command: str | None = None
    password_env: str | None = None
    password_credential: str | None = None
    password: str | None = Field(default=None, repr=False)
    oauth2_token_command: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        sources = [
            name
            for name in (
                "password_file",
                "password_command",
                "password_env",
                "password_credential",
                "password",
                "oauth2_token_command",
            )
            if getattr(self, name) is not None
        ]
        if len(sources) != 1:
            raise ValueError(
                "give exactly one of password_file, password_command, password_env, "
                "password_credential or oauth2_token_command"
                + (f" (found {', '.join(sources)})" if sources else "")
            )
        return self


class ServerSettings(Credentials):
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    tls: TlsMode = TlsMode.IMPLICIT
    ca_file: Path | None = None
    timeout: float = Field(default=30.0, gt=0, le=600)

    @model_validator(mode="after")
    def _plain_only_on_loopback(self) -> Self:
        if self.tls is TlsMode.PLAIN and not is_loopback_host(self.host):
            raise ValueError(
                f"tls = 'plain' is only allowed for a loopback host, not {self.host!r}"
            )
        return self


class ImapSettings(ServerSettings):
    idle: bool = True
    fetch_batch: int = Field(default=500, ge=1, le=5000)
    # A fetch batch also stops at this many bytes (RFC822.SIZE), so memory follows bytes,
    # not message counts; a single bigger message is fetched alone.
    fetch_batch_bytes: int = Field(default=32 * 1024 * 1024, ge=64 * 1024, le=1024**3)

    def effective_port(self) -> int:
        return self.port or (993 if self.tls is TlsMode.IMPLICIT else 143)


class SmtpSettings(ServerSettings):
    # RFC 5321 4.5.3.2.6: wait up to 10 minutes for the reply to the final ".". A relay
    # that answers late is waited for instead of leaving the outcome unknown.
    data_timeout: float = Field(default=600.0, gt=0, le=3600)
    # A mail whose outcome stayed unknown (no reply to the final ".", a crash before it
    # was recorded) waits this long for its Message-ID to show in the Sent folder
    # before keepword decides it did not go out and sends it again.
    unknown_outcome_wait: float = Field(default=900.0, ge=0, le=7 * 86400)
    # SMTP connections a drain keeps open at once (each sends one mail at a time).
    # Two is polite to any relay; raise it only where the relay allows more.
    connections: int = Field(default=2, ge=1, le=16)

    def effective_port(self) -> int:
        return self.port or (465 if self.tls is TlsMode.IMPLICIT else 587)


class CalendarSettings(_Strict):
    """Business hours. `hours` maps mon..sun to lists like ["09:00-12:00", "13:00-17:00"]."""

    timezone: str | None = None
    country: str | None = None
    subdivision: str | None = None
    hours: dict[str, list[str]] = Field(
        default_factory=lambda: {d: ["09:00-17:00"] for d in WEEKDAYS[:5]}
    )
    closed_dates: list[date] = Field(default_factory=list)
    open_dates: list[date] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else _check_zone(value)

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for day, spans in value.items():
            if day not in WEEKDAYS:
                raise ValueError(f"unknown weekday {day!r} (use {', '.join(WEEKDAYS)})")
            for span in spans:
                parse_span(span)
        if not any(value.values()):
            raise ValueError("no opening hours at all: at least one day needs an interval")
        return value

    def opening_hours(self) -> dict[int, list[tuple[time, time]]]:
        """Weekday number (Monday=0) -> sorted (open, close) intervals."""
        return {
            WEEKDAYS.index(day): sorted(parse_span(s) for s in spans)
            for day, spans in self.hours.items()
        }


def parse_span(span: str) -> tuple[time, time]:
    match = _HOURS_RE.match(span.strip())
    if not match:
        raise ValueError(f"{span!r} is not an interval like '09:00-17:00'")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2):
        raise ValueError(f"{span!r} has an impossible time")
    start = time(h1, m1)
    end = time.max if h2 == 24 else time(h2, m2)
    if end <= start:
        raise ValueError(f"{span!r} closes before it opens")
    return start, end


class PromiseSettings(_Strict):
    """How the response window promised to customers is computed."""

    quantile: float = Field(default=0.97, gt=0, lt=1)  # p90 kept ~91%: docs/benchmarks.md
    history_days: int = Field(default=90, ge=1)
    min_history_cases: int = Field(default=20, ge=1)
    default_window_minutes: int = Field(default=8 * 60, ge=1)
    maximum_window_minutes: int = Field(default=5 * 8 * 60, ge=1)
    follow_up_notes: bool = False


class ChaseSettings(_Strict):
    reminders: list[float] = Field(default_factory=lambda: [0.5, 0.8])
    escalate_at: float = Field(default=0.9, gt=0, le=1)
    escalate_after_contacts: int = Field(default=3, ge=1)
    escalate_after_owners: int = Field(default=3, ge=2)
    update_before_minutes: int = Field(default=60, ge=1)
    update_before_fraction: float = Field(default=0.1, gt=0, lt=1)
    # TOML has no null, so the digest has its own switch rather than an optional time.
    digest: bool = True
    digest_time: time = time(8, 30)
    interval_seconds: int = Field(default=60, ge=5)

    @field_validator("reminders")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        for fraction in value:
            if not 0 < fraction < 1:
                raise ValueError(f"reminder fraction {fraction} must be between 0 and 1")
        return sorted(value)


class LimitSettings(_Strict):
    """Flood and loop brakes that hold even if classification fails."""

    per_sender_per_hour: int = Field(default=3, ge=1)
    per_sender_per_day: int = Field(default=10, ge=1)
    # The mailbox's automatic customer mail (acknowledgements, notes, updates) to every
    # address together: a burst of an outage day goes out at once (2,000 customers in
    # minutes), a flood of forged senders is held to about what 200 an hour allowed a
    # day (docs/operations.md, "Rate limits").
    global_per_hour: int = Field(default=2500, ge=1)
    global_per_day: int = Field(default=5000, ge=1)


class AwayEntry(_Strict):
    """A planned absence: `address` is away from `start` up to (not including) `back_on`."""

    address: str
    start: date
    back_on: date
    why: str = "planned absence"

    _address = field_validator("address")(classmethod(lambda cls, v: _check_address(v)))

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.back_on <= self.start:
            raise ValueError(f"back_on {self.back_on} is not after start {self.start}")
        return self


class OwnersSettings(_Strict):
    """`[mailbox.owners]`: who owns a case from the start (domain.owners).

    `least_open` (default): the member on duty with the fewest open cases; `round_robin`:
    the next member on duty in `team` order; `none`: nobody until someone replies or
    takes it (reminders then go to the whole team, as before).
    """

    policy: Literal["least_open", "round_robin", "none"] = "least_open"
    # Days off of part-timers: address -> the weekdays they work (absent: every open day).
    working_days: dict[str, list[str]] = Field(default_factory=dict)
    # Planned absences; an out-of-office auto-reply of a member adds its own.
    away: list[AwayEntry] = Field(default_factory=list)
    # How long an out-of-office that states no return date keeps its sender away (they
    # are back sooner as soon as they write themselves).
    away_default_days: int = Field(default=7, ge=1, le=90)

    @field_validator("working_days")
    @classmethod
    def _days(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        checked: dict[str, list[str]] = {}
        for address, days in value.items():
            unknown = [d for d in days if d.lower() not in WEEKDAYS]
            if unknown:
                raise ValueError(f"unknown weekday(s) {unknown} for {address}")
            checked[_check_address(address)] = [d.lower() for d in days]
        return checked


class MailboxSettings(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    address: str
    display_name: str | None = None
    reference_prefix: str = Field(default="KW", pattern=r"^[A-Z][A-Z0-9]{0,9}$")
    language: str = Field(default="en", pattern=r"^[a-z]{2}$")
    templates_dir: Path | None = None
    folders: list[str] = Field(default_factory=lambda: ["INBOX"], min_length=1)
    sent_folder: str | None = "Sent"
    done_folder: str | None = None
    append_to_sent: bool = True
    poll_interval: int = Field(default=60, ge=5, le=86400)
    team: list[str] = Field(default_factory=list)
    lead: str | None = None
    subject_threading_days: int = Field(default=14, ge=0)
    imap: ImapSettings
    smtp: SmtpSettings | None = None
    calendar: CalendarSettings = Field(default_factory=CalendarSettings)
    promise: PromiseSettings = Field(default_factory=PromiseSettings)
    chase: ChaseSettings = Field(default_factory=ChaseSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    owners: OwnersSettings = Field(default_factory=OwnersSettings)
    # [mailbox.trust]: which proofs make mail the team's (docs/trust.md). Default: only
    # the mailbox's own Sent folder proves team mail; DKIM/Authentication-Results when set.
    trust: TrustSettings = Field(default_factory=TrustSettings)

    _address = field_validator("address")(classmethod(lambda cls, v: _check_address(v)))

    @field_validator("team")
    @classmethod
    def _team(cls, value: list[str]) -> list[str]:
        return [_check_address(v) for v in value]

    @field_validator("lead")
    @classmethod
    def _lead(cls, value: str | None) -> str | None:
        return None if value is None else _check_address(value)

    @model_validator(mode="after")
    def _owners_on_team(self) -> Self:
        named = {a.address for a in self.owners.away} | set(self.owners.working_days)
        strangers = sorted(named - set(self.team))
        if strangers:
            raise ValueError(f"owners: {', '.join(strangers)} not in team (only members own cases)")
        return self

    def team_addresses(self) -> frozenset[str]:
        """Everyone whose mail counts as the team's: members, lead and the shared address."""
        people = {*self.team, self.address}
        if self.lead:
            people.add(self.lead)
        return frozenset(people)


class KeepwordSettings(_Strict):
    state_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("STATE_DIRECTORY", DEFAULT_STATE_DIR))
    )
    database_url: str | None = None
    timezone: str = "UTC"
    dry_run: bool = False
    allow_inline_passwords: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    metrics_listen: str | None = None
    templates_dir: Path | None = None

    _zone = field_validator("timezone")(classmethod(lambda cls, v: _check_zone(v)))

    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'keepword.db'}"


class Settings(_Strict):
    keepword: KeepwordSettings = Field(default_factory=KeepwordSettings)
    mailbox: list[MailboxSettings] = Field(default_factory=list)
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [m.name for m in self.mailbox]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"mailbox names must be unique; repeated: {', '.join(dupes)}")
        if not self.keepword.allow_inline_passwords:
            for box in self.mailbox:
                for server in (box.imap, box.smtp):
                    if server is not None and server.password is not None:
                        raise ValueError(
                            f"mailbox {box.name!r}: inline 'password' is refused; use "
                            "password_file, password_command, password_env or "
                            "password_credential (or set keepword.allow_inline_passwords)"
                        )
        return self

    def mailbox_named(self, name: str) -> MailboxSettings:
        for box in self.mailbox:
            if box.name == name:
                return box
        raise KeyError(name)

    def zone_for(self, box: MailboxSettings) -> ZoneInfo:
        return ZoneInfo(box.calendar.timezone or self.keepword.timezone)


def resolve_config_path(cli_path: str | Path | None) -> Path:
    if cli_path:
        return Path(cli_path)
    if env := os.environ.get(CONFIG_ENV):
        return Path(env)
    return DEFAULT_CONFIG_PATH


def load_config(path: Path) -> Settings:
    """Read and validate a TOML file; raise ConfigError listing every problem."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None
    return parse_config(data, path)


def parse_config(data: dict[str, Any], path: Path) -> Settings:
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_describe(path, data, err) for err in exc.errors()]) from None
    return settings.model_copy(update={"source": path})


def _describe(path: Path, data: dict[str, Any], err: Any) -> str:
    key = _dotted(data, err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key (a typo? see config/keepword.example.toml)"
    elif err["type"] == "missing":
        message = "required key is missing"
    return f"{path}: {key or '(top level)'}: {message}"


def _dotted(data: dict[str, Any], loc: tuple[Any, ...]) -> str:
    """Render a pydantic location as a TOML key, naming mailboxes by their name."""
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int) and parts:
            name = node[item].get("name") if isinstance(node, list) and item < len(node) else None
            label = f"[{item}]" if not isinstance(name, str) else f"[{item}:{name}]"
            parts[-1] += label
        else:
            parts.append(str(item))
        try:
            node = node[item]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(parts)
