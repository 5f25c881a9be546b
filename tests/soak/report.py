"""The soak's figures and violations as a plain-text table (pytest output, scripts/soak)."""

from __future__ import annotations

from datetime import datetime

from tests.soak.driver import SoakRecord
from tests.soak.invariants import Finding, run_figures

SHOWN_VIOLATIONS = 12


def table(record: SoakRecord, findings: list[Finding]) -> str:
    lines = ["soak run", *_rows(run_figures(record)), "", "timeline (virtual, UTC)"]
    lines += [f"  {line}" for line in timeline(record)]
    for finding in findings:
        verdict = "ok" if not finding.violations else f"FAIL ({len(finding.violations)})"
        lines += ["", f"{finding.name}: {verdict}", *_rows(finding.figures)]
        lines += [f"  ! {v}" for v in finding.violations[:SHOWN_VIOLATIONS]]
        if len(finding.violations) > SHOWN_VIOLATIONS:
            lines.append(f"  ! ... and {len(finding.violations) - SHOWN_VIOLATIONS} more")
    return "\n".join(lines)


def _rows(figures: dict[str, object]) -> list[str]:
    width = max((len(k) for k in figures), default=0)
    return [f"  {key:<{width}}  {value}" for key, value in figures.items()]


def violations(findings: list[Finding]) -> list[str]:
    return [f"{f.name}: {v}" for f in findings for v in f.violations]


def timeline(record: SoakRecord) -> list[str]:
    """Faults and daemon lives in order: what the invariants' tolerances refer to."""
    entries = [
        (w.start, f"{w.kind:<10} {w.start:%a %H:%M} - {_at(w.end)}") for w in record.faults
    ] + [
        (life.started_at, f"{'daemon':<10} {life.started_at:%a %H:%M} - {_at(life.ended_at)} "
         f"({life.how})")
        for life in record.lives
    ]  # fmt: skip
    return [text for _, text in sorted(entries, key=lambda e: e[0])]


def _at(when: datetime | None) -> str:
    return "open" if when is None else f"{when:%a %H:%M}"
