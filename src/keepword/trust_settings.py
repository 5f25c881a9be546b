"""`[mailbox.trust]`: who owns new cases and which proofs make mail the team's.

A new model the coordinator hooks into MailboxSettings as
`trust: TrustSettings = Field(default_factory=TrustSettings)`. The team's addresses
stay where they are (`team`, `lead`, `address`); this adds what trust and ownership need:

    [mailbox.trust]
    owner_policy = "least_open"          # round_robin | least_open | none
    dkim_domains = ["example.com"]       # DKIM of these domains proves a team From
    trusted_authserv_ids = ["mx.example.com"]   # Authentication-Results we believe

    [mailbox.trust.working_days]         # part-timers (absent: every open day)
    "bob@example.com" = ["mon", "tue", "wed"]

    [[mailbox.trust.away]]               # planned absences (out-of-office adds its own)
    address = "alice@example.com"
    start = 2025-03-03
    back_on = 2025-03-10                 # first day back
"""

from __future__ import annotations

import re
from datetime import date
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keepword.domain.owners import AwayPeriod, OwnerPolicy, Roster
from keepword.domain.trust import TrustPolicy

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")
# An authserv-id is a domain name (RFC 8601 2.5); a hostname-like token is enough here.
_AUTHSERV = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_DOMAIN = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _address(value: str) -> str:
    if not _ADDRESS.match(value):
        raise ValueError(f"{value!r} is not an e-mail address")
    return value.lower()


class AwaySettings(_Strict):
    address: str
    start: date
    back_on: date | None = None  # None: until they write again
    why: str = "planned absence"

    _check = field_validator("address")(classmethod(lambda cls, v: _address(v)))

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.back_on is not None and self.back_on <= self.start:
            raise ValueError(f"back_on {self.back_on} is not after start {self.start}")
        return self

    def period(self) -> AwayPeriod:
        return AwayPeriod(self.address, self.start, self.back_on, self.why)


class TrustSettings(_Strict):
    owner_policy: OwnerPolicy = OwnerPolicy.LEAST_OPEN
    dkim_domains: list[str] = Field(default_factory=list)
    trusted_authserv_ids: list[str] = Field(default_factory=list)
    working_days: dict[str, list[str]] = Field(default_factory=dict)
    away: list[AwaySettings] = Field(default_factory=list)

    @field_validator("dkim_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        for domain in value:
            if not _DOMAIN.match(domain.strip(".")):
                raise ValueError(f"{domain!r} is not a domain name")
        return [d.lower().strip(".") for d in value]

    @field_validator("trusted_authserv_ids")
    @classmethod
    def _authserv(cls, value: list[str]) -> list[str]:
        for ident in value:
            if not _AUTHSERV.match(ident):
                raise ValueError(f"{ident!r} is not an authserv-id (a host name)")
        return [i.lower() for i in value]

    @field_validator("working_days")
    @classmethod
    def _days(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        checked: dict[str, list[str]] = {}
        for address, days in value.items():
            unknown = [d for d in days if d.lower() not in WEEKDAYS]
            if unknown:
                raise ValueError(f"unknown weekday(s) {unknown} for {address}")
            checked[_address(address)] = [d.lower() for d in days]
        return checked

    def policy(self, team: frozenset[str], own_addresses: frozenset[str]) -> TrustPolicy:
        """The domain's TrustPolicy for a mailbox (`team`: MailboxSettings.team_addresses())."""
        return TrustPolicy.of(team, own_addresses, self.dkim_domains, self.trusted_authserv_ids)

    def roster(self, staff: list[str], away: tuple[AwayPeriod, ...] = ()) -> Roster:
        """Who may own cases: MailboxSettings.team in its order, with planned and
        recorded absences (`away`: the ones out-of-office replies added, from the store)."""
        days = {a: frozenset(WEEKDAYS.index(d) for d in ds) for a, ds in self.working_days.items()}
        planned = tuple(a.period() for a in self.away)
        return Roster(tuple(a.lower() for a in staff), (*planned, *away), days)
