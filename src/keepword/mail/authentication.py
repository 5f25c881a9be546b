"""Verify where a raw message came from: DKIM, ARC and Authentication-Results.

The libraries do the work (dkimpy verifies signatures and ARC chains, authres parses
RFC 8601 headers); this module turns their answers into domain.trust's plain values,
which the shell stores with the message so the check runs once, not on every triage.

DNS is the only I/O: `dns` is dkimpy's `dnsfunc` (name, timeout=...) -> TXT bytes or
None. Tests pass their own and never touch the network; the daemon passes None for
dkimpy's resolver. A lookup that fails counts as "not verified", never as an error that
stops a message: a message without proof is simply nobody's in particular.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

import authres  # type: ignore[import-untyped]

from keepword.domain.trust import ArcChain, Authentication, AuthResult, DkimSignature

log = logging.getLogger(__name__)

DnsLookup = Callable[..., Any]

AUTHENTICATION_RESULTS = "Authentication-Results"
ARC_AUTHENTICATION_RESULTS = "ARC-Authentication-Results"
# dkimpy refuses keys below this many bits (its own default): 512-bit keys are forgeable.
MIN_KEY_BITS = 1024
# A mail may carry any number of signatures; a hostile one could make us look up many.
MAX_SIGNATURES = 5
_INSTANCE = re.compile(r"^\s*i\s*=\s*(\d+)\s*;\s*", re.IGNORECASE)


def verify(raw: bytes, dns: DnsLookup | None = None) -> Authentication:
    """Everything that can be verified about `raw` (RFC 5322 bytes)."""
    headers = _headers(raw)
    return Authentication(
        dkim=verify_dkim(raw, dns),
        results=parse_results(headers.get_all(AUTHENTICATION_RESULTS) or ()),
        arc=verify_arc(raw, headers.get_all(ARC_AUTHENTICATION_RESULTS) or (), dns),
    )


def verify_as_configured(
    raw: bytes, *, dkim: bool, results: bool, dns: DnsLookup | None = None
) -> Authentication:
    """Only what the configuration can use: DKIM signatures when team domains are set
    (`dkim`), Authentication-Results and ARC when authserv-ids are trusted (`results`).
    Each check costs CPU and DNS; one nobody listens to is not run."""
    if not results:
        return Authentication(dkim=verify_dkim(raw, dns) if dkim else ())
    headers = _headers(raw)
    return Authentication(
        dkim=verify_dkim(raw, dns) if dkim else (),
        results=parse_results(headers.get_all(AUTHENTICATION_RESULTS) or ()),
        arc=verify_arc(raw, headers.get_all(ARC_AUTHENTICATION_RESULTS) or (), dns),
    )


def verify_dkim(raw: bytes, dns: DnsLookup | None = None) -> tuple[DkimSignature, ...]:
    """Each DKIM-Signature (top first, at most MAX_SIGNATURES) and whether it verifies."""
    import dkim  # type: ignore[import-untyped]  # here: dkimpy and dnspython cost ~0.1 s a start

    try:
        checker = dkim.DKIM(raw, minkey=MIN_KEY_BITS)
    except Exception as exc:  # dkimpy raises plain errors on unparsable mail
        log.debug("DKIM: cannot read the message: %s", exc)
        return ()
    count = sum(1 for name, _value in checker.headers if name.lower() == b"dkim-signature")
    return tuple(_verify_one(checker, index, dns) for index in range(min(count, MAX_SIGNATURES)))


def _verify_one(checker: Any, index: int, dns: DnsLookup | None) -> DkimSignature:
    try:
        valid = bool(
            checker.verify(idx=index) if dns is None else checker.verify(idx=index, dnsfunc=dns)
        )
        reason = "" if valid else "signature does not verify"
    except Exception as exc:  # a DKIMException, a DNS error, a malformed tag: not verified
        valid, reason = False, f"{type(exc).__name__}: {exc}"
    return DkimSignature(
        domain=_text(getattr(checker, "domain", None)).lower(),
        valid=valid,
        selector=_text(getattr(checker, "selector", None)),
        reason=reason,
    )


def verify_arc(
    raw: bytes, arc_results: Iterable[str], dns: DnsLookup | None = None
) -> ArcChain | None:
    """The ARC chain (None when the mail has none) and its newest instance's results."""
    values = list(arc_results)
    if not values:
        return None
    import dkim

    try:
        outcome = dkim.arc_verify(raw) if dns is None else dkim.arc_verify(raw, dnsfunc=dns)
        verdict, _details, reason = outcome
    except Exception as exc:
        return ArcChain(False, (), f"{type(exc).__name__}: {exc}")
    newest = _newest_instance(values)
    results = parse_results([newest]) if newest is not None else ()
    return ArcChain(_text(verdict) == "pass", results, _text(reason))


def _newest_instance(values: list[str]) -> str | None:
    numbered: list[tuple[int, str]] = []
    for value in values:
        match = _INSTANCE.match(value)
        if match:
            numbered.append((int(match.group(1)), value[match.end() :]))
    return max(numbered)[1] if numbered else None


def parse_results(values: Iterable[str]) -> tuple[AuthResult, ...]:
    """Authentication-Results header values -> results, in header order.

    A header authres cannot parse is skipped: it proves nothing either way.
    """
    found: list[AuthResult] = []
    for value in values:
        try:
            header = authres.AuthenticationResultsHeader.parse_value(_unfold(value))
        except Exception as exc:  # authres.AuthResError and its SyntaxError
            log.debug("unparsable Authentication-Results %r: %s", value[:200], exc)
            continue
        for result in header.results:
            found.append(_result(header.authserv_id or "", result))
    return tuple(found)


def _result(authserv_id: str, result: Any) -> AuthResult:
    props = {(p.type.lower(), p.name.lower()): str(p.value or "") for p in result.properties}
    return AuthResult(
        authserv_id=authserv_id.lower(),
        method=str(result.method).lower(),
        result=str(result.result).lower(),
        header_d=props.get(("header", "d"), "").lower(),
        header_from=props.get(("header", "from"), "").lower(),
    )


def _headers(raw: bytes) -> Any:
    return BytesHeaderParser(policy=compat32).parsebytes(raw)


def _unfold(value: str) -> str:
    return " ".join(str(value).split())


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)
