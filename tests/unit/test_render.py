"""Rendering the mail texts: languages, strictness, honest wording."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from keepword.domain.model import Address
from keepword.mail.render import (
    TEMPLATE_NAMES,
    AcknowledgementContext,
    CustomerUpdateContext,
    DigestCase,
    DigestContext,
    FollowUpNoteContext,
    LeadAlertContext,
    Renderer,
    TeamCaseContext,
    TemplateError,
    acknowledgement_context,
    customer_due,
    quote,
    shipped_template_dirs,
    window_duration_text,
)
from tests.fixtures.facts import message_facts

BERLIN = ZoneInfo("Europe/Berlin")
DUE = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)  # 12:00 in Berlin


def ack(**changes: object) -> AcknowledgementContext:
    base = AcknowledgementContext(
        reference="KW-42",
        customer_name="Ann Example",
        subject="Printer on fire",
        due_local=DUE.astimezone(BERLIN),
        due_customer=None,
        window_text="4 business hours",
        is_default=False,
        behind=False,
        opening_hours=["Mon–Fri 09:00–17:00 (Europe/Berlin)"],
        team_name="Example Support",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def team_case(**changes: object) -> TeamCaseContext:
    base = TeamCaseContext(
        reference="KW-42",
        customer="ann@example.org",
        customer_name="Ann Example",
        subject="Printer on fire",
        opened_local=datetime(2026, 11, 23, 9, 0, tzinfo=BERLIN),
        age_text="1 day 2 h",
        promised_local=DUE.astimezone(BERLIN),
        promise_made_local=datetime(2026, 11, 23, 9, 1, tzinfo=BERLIN),
        is_default=False,
        owner=None,
        reason="80% of the promised window has passed",
        last_message="Hello,\n\nthe printer is on fire.\n\nAnn",
        last_message_at=datetime(2026, 11, 23, 9, 0, tzinfo=BERLIN),
        mailbox_address="support@example.com",
        done_folder="Done",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def renderer() -> Renderer:
    return Renderer()


def test_templates_ship_with_the_package_or_the_repo() -> None:
    dirs = shipped_template_dirs()
    assert dirs
    assert any((d / "en" / "acknowledgement.txt.j2").is_file() for d in dirs)


@pytest.mark.parametrize("language", ["en", "de"])
def test_acknowledgement_names_the_reference_time_and_hours(
    renderer: Renderer, language: str
) -> None:
    text = renderer.render("acknowledgement", language, ack()).text
    assert "KW-42" in text
    assert "Case reference: KW-42" in text
    assert "12:00 (Europe/Berlin)" in text
    assert "Mon–Fri 09:00–17:00 (Europe/Berlin)" in text
    assert "[KW-42]" in text  # keep the reference in the subject
    assert ("automatic message" if language == "en" else "automatische Nachricht") in text
    assert ("24, 2026" if language == "en" else "24. November 2026") in text


def test_english_and_german_differ(renderer: Renderer) -> None:
    en = renderer.render("acknowledgement", "en", ack()).text
    de = renderer.render("acknowledgement", "de", ack()).text
    assert "Dienstag" in de and "Tuesday" in en
    assert en != de


def test_customer_time_shown_only_when_the_offset_differs(renderer: Renderer) -> None:
    new_york = customer_due(DUE, BERLIN, -300)
    assert new_york is not None
    text = renderer.render("acknowledgement", "en", ack(due_customer=new_york)).text
    assert "12:00 (Europe/Berlin)" in text
    assert "06:00 (UTC-05:00)" in text
    assert "your time" in text
    # Same offset as the mailbox at the due instant (+01:00 in November): nothing extra.
    assert customer_due(DUE, BERLIN, 60) is None
    assert customer_due(DUE, BERLIN, None) is None
    plain = renderer.render("acknowledgement", "en", ack(due_customer=None)).text
    assert "your time" not in plain and "UTC-" not in plain


def test_customer_offset_follows_daylight_saving() -> None:
    summer = datetime(2026, 7, 1, 10, 0, tzinfo=UTC)
    assert customer_due(summer, BERLIN, 120) is None  # CEST
    shown = customer_due(summer, BERLIN, 60)  # someone still on +01:00 (e.g. Lagos)
    assert shown is not None and shown.hour == 11


@pytest.mark.parametrize("language", ["en", "de"])
def test_default_window_claims_no_measurement(renderer: Renderer, language: str) -> None:
    measured = renderer.render("acknowledgement", language, ack()).text.lower()
    default = renderer.render("acknowledgement", language, ack(is_default=True)).text.lower()
    word = "measured" if language == "en" else "gemessen"
    assert word in measured
    assert word not in default
    assert ("standard response time" if language == "en" else "übliche antwortzeit") in default


@pytest.mark.parametrize("language", ["en", "de"])
def test_behind_says_so_honestly(renderer: Renderer, language: str) -> None:
    text = renderer.render("acknowledgement", language, ack(behind=True)).text
    assert ("we are behind" if language == "en" else "im Rückstand") in text
    normal = renderer.render("acknowledgement", language, ack()).text
    assert ("we are behind" if language == "en" else "im Rückstand") not in normal


def test_html_alternative_is_escaped(renderer: Renderer) -> None:
    out = renderer.render("acknowledgement", "en", ack(customer_name="<b>Eve</b> & co"))
    assert out.html is not None
    assert "&lt;b&gt;Eve&lt;/b&gt; &amp; co" in out.html
    assert "<b>Eve</b> & co" in out.text  # plain text is never escaped


def test_language_without_template_falls_back_to_english(renderer: Renderer) -> None:
    text = renderer.render("reminder", "fr", team_case()).text
    assert text.startswith("Reminder for case KW-42")
    fr = renderer.render("acknowledgement", "fr", ack()).text
    assert "automatic message" in fr


def test_strict_undefined_catches_a_missing_variable(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "acknowledgement.txt.j2").write_text("Hi {{ no_such_thing }}\n")
    with pytest.raises(TemplateError, match="no_such_thing"):
        Renderer(mailbox_dir=tmp_path).render("acknowledgement", "en", ack())


def test_mailbox_folder_overrides_single_files(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "acknowledgement.txt.j2").write_text("Custom {{ reference }}\n")
    renderer = Renderer(mailbox_dir=tmp_path)
    assert renderer.render("acknowledgement", "en", ack()).text == "Custom KW-42\n"
    # Files the folder does not have still come from the shipped templates.
    assert "Reminder for case" in renderer.render("reminder", "en", team_case()).text
    # The mailbox folder wins over the global one.
    other = tmp_path / "global"
    (other / "en").mkdir(parents=True)
    (other / "en" / "acknowledgement.txt.j2").write_text("Global\n")
    both = Renderer(mailbox_dir=tmp_path, global_dir=other)
    assert both.render("acknowledgement", "en", ack()).text == "Custom KW-42\n"


def test_unknown_template_is_an_error(renderer: Renderer) -> None:
    with pytest.raises(TemplateError):
        renderer.render("no_such_mail", "en", ack())


@pytest.mark.parametrize("language", ["en", "de"])
def test_follow_up_note_and_update(renderer: Renderer, language: str) -> None:
    note = FollowUpNoteContext(
        reference="KW-42",
        customer_name="",
        subject="Printer",
        due_local=DUE.astimezone(BERLIN),
        due_customer=None,
        team_name="Support",
    )
    text = renderer.render("follow_up_note", language, note).text
    assert "KW-42" in text and "12:00" in text
    update = CustomerUpdateContext(
        reference="KW-42",
        customer_name="Ann",
        subject="Printer",
        promised_local=DUE.astimezone(BERLIN),
        due_local=datetime(2026, 11, 25, 10, 0, tzinfo=UTC).astimezone(BERLIN),
        due_customer=None,
        window_text="1 business day",
        is_default=False,
        what_is_happening="Alice is checking the printer logs.",
        opening_hours=["Mon–Fri 09:00–17:00"],
        team_name="Support",
    )
    text = renderer.render("customer_update", language, update).text
    assert "Alice is checking the printer logs." in text
    assert "12:00" in text and "11:00" in text  # the broken time and the new one
    assert ("sorry" if language == "en" else "leid") in text
    assert "Case reference: KW-42" in text
    ahead = "will not make that time" if language == "en" else "nicht einhalten"
    missed = "missed that time" if language == "en" else "verpasst"
    assert ahead in text and missed not in text
    late = renderer.render("customer_update", language, replace(update, late=True)).text
    assert missed in late and ahead not in late


def test_team_mails_are_actionable(renderer: Renderer) -> None:
    for name in ("reminder", "escalation"):
        text = renderer.render(name, "en", team_case()).text
        assert "KW-42" in text and "ann@example.org" in text and "Printer on fire" in text
        assert "1 day 2 h" in text
        assert "> the printer is on fire." in text
        assert "keepword assign" not in text  # staff have no shell: commands by mail
        assert "#take" in text and "#close" in text and "[KW-42]" in text
        assert '"Done" folder' in text
        assert "80% of the promised window has passed" in text
    no_done = renderer.render("reminder", "en", team_case(done_folder=None)).text
    assert "folder" not in no_done.split("To close it:")[1]


@pytest.mark.parametrize("language", ["en", "de"])
@pytest.mark.parametrize("name", ["reminder", "escalation"])
def test_team_mails_name_mail_commands_in_both_parts_never_a_shell(
    renderer: Renderer, name: str, language: str
) -> None:
    rendered = renderer.render(name, language, team_case())
    assert rendered.html is not None
    for part in (rendered.text, rendered.html):
        assert "keepword assign" not in part and "keepword close" not in part
        assert "#take" in part and "#close" in part


def test_lead_alert_and_digest(renderer: Renderer) -> None:
    alert = LeadAlertContext(
        reference="KW-42",
        customer="ann@example.org",
        subject="Printer",
        window_text="7 business days",
        maximum_text="5 business days",
        due_local=DUE.astimezone(BERLIN),
        explanation="Promised 56 business hours: p90 of 40 first responses.",
        mailbox_address="support@example.com",
        team_name="Support",
    )
    text = renderer.render("lead_alert", "en", alert).text
    assert "behind" in text and "7 business days" in text and "5 business days" in text
    case = DigestCase("KW-7", "bob@example.org", "Invoice", "alice@example.com", None)
    overdue = DigestCase("KW-3", "eve@example.org", "Refund", None, DUE.astimezone(BERLIN))
    digest = DigestContext(
        mailbox_name="support",
        mailbox_address="support@example.com",
        day=date(2026, 11, 24),
        open_by_urgency=[overdue, case],
        due_today=[],
        overdue=[overdue],
        kept_yesterday=4,
        broken_yesterday=1,
    )
    text = renderer.render("digest", "en", digest).text
    assert "4 promises kept, 1 broken" in text
    assert text.index("KW-3") < text.index("KW-7")
    assert "Overdue (1)" in text and "Due today (0)" in text
    assert "Tuesday, November 24, 2026" in text


def test_every_template_name_renders_in_english(renderer: Renderer) -> None:
    assert set(TEMPLATE_NAMES) == {
        "acknowledgement",
        "follow_up_note",
        "customer_update",
        "reminder",
        "escalation",
        "customer_unreachable",
        "lead_alert",
        "digest",
        "new_time",
        "command_reply",
    }


def test_quote_trims_long_messages() -> None:
    text = "\n".join(f"line {i}" for i in range(100))
    quoted = quote(text, max_lines=5)
    assert quoted.splitlines()[0] == "> line 0"
    assert quoted.endswith("> [...]")
    assert len(quoted.splitlines()) == 6
    assert quote("short") == "> short"


@pytest.mark.parametrize(
    ("minutes", "en", "de"),
    [
        (45, "45 business minutes", "45 Geschäftsminuten"),
        (60, "1 business hour", "1 Geschäftsstunde"),
        (4 * 60 + 10, "4.5 business hours", "4,5 Geschäftsstunden"),
        (8 * 60, "1 business day", "1 Geschäftstag"),
        (20 * 60, "2.5 business days", "2,5 Geschäftstage"),
    ],
)
def test_window_duration_text(minutes: int, en: str, de: str) -> None:
    assert window_duration_text(minutes, "en") == en
    assert window_duration_text(minutes, "de") == de


def test_acknowledgement_context_from_window_and_calendar(renderer: Renderer) -> None:
    from datetime import time

    from keepword.domain.business_calendar import BusinessCalendar
    from keepword.domain.windows import Window

    calendar = BusinessCalendar(BERLIN, {d: [(time(9), time(17))] for d in range(5)})
    window = Window(minutes=240, due_at=DUE, is_default=True, behind=False)
    ann = Address("ann@example.org", "Ann")
    question = message_facts(ann, subject="Printer", date_offset_minutes=-300)
    ctx = acknowledgement_context(
        window, calendar, question, reference="KW-42", team_name="Support", language="de"
    )
    assert (ctx.customer_name, ctx.subject) == ("Ann", "Printer")
    assert ctx.due_local.tzinfo == BERLIN and ctx.due_local.hour == 12
    assert ctx.due_customer is not None and ctx.due_customer.hour == 6
    assert ctx.window_text == "4 Geschäftsstunden"
    assert ctx.is_default and not ctx.behind
    assert ctx.opening_hours == calendar.describe_hours("de")
    text = renderer.render("acknowledgement", "de", ctx).text
    assert "übliche Antwortzeit (4 Geschäftsstunden)" in text
    assert "gemessen" not in text


@pytest.mark.parametrize("language", ["en", "de"])
def test_behind_on_a_default_window_claims_no_measurement(
    renderer: Renderer, language: str
) -> None:
    out = renderer.render("acknowledgement", language, ack(behind=True, is_default=True))
    word = "measured" if language == "en" else "gemessen"
    assert word not in out.text.lower()
    assert out.html is None or word not in out.html.lower()
    assert ("we are behind" if language == "en" else "im Rückstand") in out.text
    assert "12:00" in out.text


def test_renderer_for_mailbox_uses_both_override_folders(tmp_path: Path) -> None:
    from keepword.config import Settings

    box_dir, global_dir = tmp_path / "box", tmp_path / "global"
    for folder, text in ((box_dir, "box"), (global_dir, "global")):
        (folder / "en").mkdir(parents=True)
        (folder / "en" / "reminder.txt.j2").write_text(f"{text} {{{{ reference }}}}\n")
    (global_dir / "en" / "escalation.txt.j2").write_text("global escalation\n")
    settings = Settings.model_validate(
        {
            "keepword": {"allow_inline_passwords": True, "templates_dir": str(global_dir)},
            "mailbox": [
                {
                    "name": "support",
                    "address": "support@example.com",
                    "templates_dir": str(box_dir),
                    "imap": {"host": "127.0.0.1", "tls": "plain", "username": "u", "password": "p"},
                }
            ],
        }
    )
    renderer = Renderer.for_mailbox(settings, settings.mailbox[0])
    assert renderer.render("reminder", "en", team_case()).text == "box KW-42\n"
    assert renderer.render("escalation", "en", team_case()).text == "global escalation\n"
    assert "KW-42" in renderer.render("acknowledgement", "en", ack()).text


@pytest.mark.parametrize(
    ("language", "opening", "ask"),
    [
        ("en", "The customer of case KW-42 cannot be reached by mail", "another way"),
        ("de", "Der Kunde von Vorgang KW-42 ist per E-Mail nicht erreichbar", "anderem Weg"),
    ],
)
def test_the_unreachable_notice_says_why_and_what_to_do(
    renderer: Renderer, language: str, opening: str, ask: str
) -> None:
    refused = "the acknowledgement to ann@example.org was refused for good: 550 no such user"
    text = renderer.render("customer_unreachable", language, team_case(reason=refused)).text
    assert text.startswith(f"{opening}: {refused}.")
    assert ask in text and "Ann Example" in text
    assert text.rstrip().endswith("Case reference: KW-42")
