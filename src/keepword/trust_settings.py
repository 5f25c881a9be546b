"""`[mailbox.trust]`: which proofs make mail the team's (docs/trust.md).

    [mailbox.trust]
    dkim_domains = ["example.com"]       # DKIM of these domains proves a team From
    trusted_authserv_ids = ["mx.example.com"]   # Authentication-Results we believe

Who owns cases, and who is away, is `[mailbox.owners]` (config.OwnersSettings).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from keepword.domain.trust import TrustPolicy

# An authserv-id is a domain name (RFC 8601 2.5); a hostname-like token is enough here.
_AUTHSERV = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_DOMAIN = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class TrustSettings(_Strict):
    dkim_domains: list[str] = Field(default_factory=list)
    trusted_authserv_ids: list[str] = Field(default_factory=list)

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

    def policy(self, team: frozenset[str], own_addresses: frozenset[str]) -> TrustPolicy:
        """The domain's TrustPolicy for a mailbox (`team`: MailboxSettings.team_addresses())."""
        return TrustPolicy.of(team, own_addresses, self.dkim_domains, self.trusted_authserv_ids)
