"""The backtest as one self-contained HTML file a team lead can read offline or attach.

Charts are drawn with matplotlib and inlined as SVG (no scripts, no external files):
calibration (stated quantile vs kept share, per week), promise vs actual over time, the
response-time distribution, and the backlog each arrival met. The markup is XHTML-clean
so any XML parser reads it (the tests check that).
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from keepword.backtest.replay import Replay
from keepword.backtest.summary import Figures, FixedPromise, duration_text
from keepword.domain.business_calendar import BusinessCalendar
from keepword.errors import KeepwordError

CHARTS = ("calibration", "promise-vs-actual", "distribution", "backlog")

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:70em;margin:2em auto;
padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em}
.verdict{font-size:1.15em;background:#f3f7f3;border-left:4px solid #3a7d44;padding:.8em 1em}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.3em .6em;border-bottom:1px solid #ddd;
text-align:right}th:first-child,td:first-child{text-align:left}
figure{margin:1em 0}figcaption{color:#555;font-size:.9em}svg{max-width:100%;height:auto}
"""


class ReportUnavailableError(KeepwordError):
    """matplotlib is not installed."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ReportUnavailableError(
            "the HTML report needs matplotlib: pip install 'keepword[report]'"
        ) from None
    matplotlib.use("svg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: small and searchable
    matplotlib.rcParams["svg.hashsalt"] = "keepword"  # the same input gives the same file
    import matplotlib.pyplot as plt

    return plt


def require_matplotlib() -> None:
    """Raise ReportUnavailableError now if the charts cannot be drawn."""
    _pyplot()


def _svg(plt: Any, figure: Any, name: str) -> str:
    """The figure as inline SVG named `name`; the figure is closed."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None}, dpi=110)
    plt.close(figure)
    text = buffer.getvalue()
    svg = text[text.index("<svg") :]
    return svg.replace("<svg ", f'<svg role="img" aria-label="{name}" class="chart-{name}" ', 1)


def _hours(minutes: float) -> float:
    return minutes / 60.0


def _weeks(result: Replay) -> list[tuple[datetime, float, float, int]]:
    """(week start, kept share, mean stated quantile, promises) of each week."""
    by_week: dict[datetime, list[tuple[bool, float]]] = {}
    for r in result.promised:
        if r.kept is None:
            continue
        start = (r.opened_at - timedelta(days=r.opened_at.weekday())).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        by_week.setdefault(start, []).append((bool(r.kept), r.level))
    return [
        (week, sum(k for k, _ in rows) / len(rows), sum(q for _, q in rows) / len(rows), len(rows))
        for week, rows in sorted(by_week.items())
    ]


def calibration_chart(plt: Any, result: Replay) -> str:
    weeks = _weeks(result)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    if weeks:
        xs = [w for w, _, _, _ in weeks]
        ax.bar(xs, [k * 100 for _, k, _, _ in weeks], width=5, color="#8fb996", label="kept")
        ax.plot(xs, [q * 100 for _, _, q, _ in weeks], color="#555", lw=1, label="level used")
    ax.axhline(result.quantile * 100, color="#c0392b", ls="--", lw=1.2, label="stated")
    ax.set_ylim(max(0.0, min([k * 100 for _, k, _, _ in weeks] + [80.0]) - 5), 100.5)
    ax.set_ylabel("% of promises kept")
    ax.set_title("Calibration: stated quantile vs share kept, per week")
    ax.legend(loc="lower right", fontsize=8)
    fig.autofmt_xdate()
    return _svg(plt, fig, "calibration")


def promise_chart(plt: Any, result: Replay) -> str:
    judged = [r for r in result.promised if r.kept is not None]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    kept = [r for r in judged if r.kept and r.actual_minutes is not None]
    missed = [r for r in judged if not r.kept]
    ax.scatter(
        [r.opened_at for r in kept],
        [_hours(max(r.actual_minutes or 1.0, 1.0)) for r in kept],
        s=3,
        color="#7f8c8d",
        alpha=0.5,
        label="actual (kept)",
        rasterized=True,  # thousands of dots: an embedded bitmap keeps the file small
    )
    ax.scatter(
        [r.opened_at for r in missed],
        [_hours(max(r.actual_minutes or r.minutes * 1.5, 1.0)) for r in missed],
        s=8,
        color="#c0392b",
        label="actual (missed)",
    )
    ax.plot(
        [r.opened_at for r in judged],
        [_hours(r.minutes) for r in judged],
        color="#2e86c1",
        lw=0.7,
        label="promised",
    )
    ax.set_yscale("log")
    ax.set_ylabel("business hours")
    ax.set_title("Promise vs actual first response, per case")
    ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    return _svg(plt, fig, "promise-vs-actual")


def distribution_chart(plt: Any, result: Replay, overall: Figures) -> str:
    actual = [
        max(r.actual_minutes, 1.0)
        for r in result.promised
        if r.kept is not None and r.actual_minutes is not None
    ]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    if actual:
        low, high = math.log10(min(actual)), math.log10(max(actual))
        edges = [10 ** (low + (high - low) * i / 40) for i in range(41)] if high > low else 20
        ax.hist(actual, bins=edges, color="#95a5a6")
        ax.set_xscale("log")
    for value, label, color in (
        (overall.median_actual, "median actual", "#555"),
        (overall.median_promise, "median promise", "#2e86c1"),
        (overall.best_fixed, "best fixed", "#c0392b"),
    ):
        if math.isfinite(value) and value > 0:
            ax.axvline(value, color=color, ls="--", lw=1.2, label=label)
    ax.set_xlabel("business minutes to first response")
    ax.set_title("Response-time distribution")
    ax.legend(fontsize=8)
    return _svg(plt, fig, "distribution")


def backlog_chart(plt: Any, result: Replay) -> str:
    fig, ax = plt.subplots(figsize=(9, 2.8))
    if result.backlog:
        ax.step(
            [at for at, _ in result.backlog],
            [n for _, n in result.backlog],
            where="post",
            color="#8e44ad",
            lw=0.8,
        )
    ax.axvline(result.start, color="#555", ls=":", lw=1)
    ax.set_ylabel("unanswered cases")
    ax.set_title("Backlog met by each arrival (dotted: first promise)")
    fig.autofmt_xdate()
    return _svg(plt, fig, "backlog")


def verdict(overall: Figures, fixed: Sequence[FixedPromise]) -> str:
    """The one line a lead reads first."""
    text = (
        f"On these {overall.promises} cases keepword would have kept {overall.kept:.0%} "
        f"of its promises with a median of {duration_text(overall.median_promise)} "
        "(business time)"
    )
    for f, figures in zip(fixed, overall.fixed, strict=True):
        text += f"; your “{f.label}” kept {figures.kept:.0%}"
    return text + "."


def _cell(value: float, *, business: bool = True) -> str:
    return html.escape(duration_text(value, business=business))


def _table(rows: Sequence[Figures], fixed: Sequence[FixedPromise]) -> str:
    head = (
        "<tr><th>month</th><th>promises</th><th>kept</th><th>median promise</th>"
        "<th>median actual</th><th>best fixed, same kept share</th>"
        "<th>median promise (wall)</th><th>best fixed (wall)</th>"
        + "".join(f"<th>“{html.escape(f.label)}” kept</th>" for f in fixed)
        + "<th>updates kept</th></tr>"
    )
    body = []
    for row in rows:
        cells = [
            html.escape(row.period),
            str(row.promises),
            f"{row.kept:.1%}" if not math.isnan(row.kept) else "-",
            _cell(row.median_promise),
            _cell(row.median_actual),
            _cell(row.best_fixed),
            _cell(row.median_promise_wall, business=False),
            _cell(row.best_fixed_wall, business=False),
            *(f"{f.kept:.1%}" for f in row.fixed),
            f"{row.updates_kept:.1%} of {row.updates}" if row.updates else "-",
        ]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


def render_html(
    result: Replay,
    rows: Sequence[Figures],
    fixed: Sequence[FixedPromise],
    calendar: BusinessCalendar,
    *,
    title: str,
) -> str:
    """The whole report (rows: `summary.monthly`, the last one the whole period)."""
    plt = _pyplot()
    overall = rows[-1]
    charts = [
        (
            "calibration",
            calibration_chart(plt, result),
            "Bars: share kept each week. "
            f"Dashed: the stated p{result.quantile * 100:g}; line: the level the calibration used.",
        ),
        (
            "promise-vs-actual",
            promise_chart(plt, result),
            "Each dot is a case; red ones "
            "missed their promise. The blue line is what keepword promised at that moment.",
        ),
        (
            "distribution",
            distribution_chart(plt, result, overall),
            "How long first responses took (business minutes, log scale).",
        ),
        ("backlog", backlog_chart(plt, result), "Unanswered cases when each case arrived."),
    ]
    figures = "".join(
        f'<figure id="{name}">{svg}<figcaption>{html.escape(caption)}</figcaption></figure>'
        for name, svg, caption in charts
    )
    period = (
        f"{result.start.astimezone(calendar.zone):%Y-%m-%d} to "
        f"{result.end.astimezone(calendar.zone):%Y-%m-%d} ({calendar.zone.key})"
    )
    document = (
        '<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE html>\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8"/>'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(period)}</p>"
        f'<p class="verdict">{html.escape(verdict(overall, fixed))}</p>'
        f"<h2>Per month</h2>{_table(rows, fixed)}"
        "<p>Kept: the first response came by the promised time. Best fixed: the shortest "
        "fixed time that would have been kept as often as keepword's promises were, "
        "chosen in hindsight. Business time counts opening hours only; wall clock is "
        "what the customer sees.</p>"
        f"<h2>Charts</h2>{figures}</body></html>\n"
    )
    return _drop_comments(document)


def _drop_comments(document: str) -> str:
    # matplotlib's SVG carries a generator comment; harmless, but a clean file is smaller.
    return re.sub(r"<!--.*?-->", "", document, flags=re.S)
