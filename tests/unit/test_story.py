"""The whole story of a case (domain.story) and its templates."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from keepword.domain.cases import Event, EventKind
from keepword.domain.model import Kind, PromiseAudience, PromiseKind, PromiseState
from keepword.domain.story import (
    CaseRecord,
    Part,
    Story,
    StoryMessage,
    StoryPromise,
    build_story,
    promise_fate,
    trim_quoted,
)
from keepword.mail.render import Renderer, TeamCaseContext

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")

FIRST = StoryMessage(
    1,
    T0,
    Kind.CUSTOMER,
    "ann@customer.example",
    "My invoice 4711 is wrong: VAT twice.\n\nAnn",
    "Ann",
)
SECOND = StoryMessage(
    3,
    T0 + timedelta(days=1),
    Kind.CUSTOMER,
    "ann@customer.example",
    "Any news?\n\nOn Mon, 23 Nov 2026 at 10:00, Support <support@shop.example> wrote:\n"
    "> We received your message\n> Case reference: KW-1\n",
)
REPLY = StoryMessage(
    4, T0 + timedelta(days=1, hours=2), Kind.STAFF, "bob@shop.example", "Fixed, sorry!"
)
ROBOT = StoryMessage(2, T0, Kind.AUTOMATED, "mailer-daemon@x.example", "bounce")
FIRST_PROMISE = StoryPromise(
    10,
    T0,
    T0 + timedelta(hours=8),
    PromiseKind.FIRST_RESPONSE,
    PromiseAudience.CUSTOMER,
    PromiseState.SUPERSEDED,
    T0 + timedelta(hours=6),
)
UPDATED = StoryPromise(
    11,
    T0 + timedelta(hours=6),
    T0 + timedelta(days=1, hours=4),
    PromiseKind.UPDATE,
    PromiseAudience.CUSTOMER,
    PromiseState.KEPT,
    T0 + timedelta(days=1, hours=2),
)
EVENTS = (
    Event(EventKind.OPENED, T0, "ann@customer.example", "new conversation"),
    Event(EventKind.OWNER_CHANGED, T0, None, "owner (none) -> bob@shop.example: owner policy"),
    Event(EventKind.ACKNOWLEDGEMENT, T0, None, "sent"),
    Event(EventKind.CUSTOMER_UPDATE, T0 + timedelta(hours=6), None, "new time told"),
    Event(EventKind.NOTE, T0 + timedelta(hours=7), "bob@shop.example", "asked accounting"),
    Event(
        EventKind.REFUSED,
        T0 + timedelta(hours=8),
        "mallory@evil.test",
        "refused: mallory@evil.test tried to join by tag",
    ),
    Event(EventKind.MESSAGE_IN, T0, "ann@customer.example", "duplicate of the message"),
)


def story_now() -> datetime:
    return T0 + timedelta(days=2)


def test_the_story_is_complete_and_in_order() -> None:
    record = CaseRecord([REPLY, SECOND, ROBOT, FIRST], [UPDATED, FIRST_PROMISE], EVENTS)
    story = build_story("KW-1", record, now=story_now())
    parts = [entry.part for entry in story.entries]
    assert parts == [
        Part.CUSTOMER,  # T0: the customer's message first at its instant
        Part.ASSIGNMENT,
        Part.PROMISE,
        Part.UPDATE,  # the acknowledgement
        Part.PROMISE,  # +6h the new promise, then the update that told it
        Part.UPDATE,
        Part.NOTE,
        Part.REFUSED,
        Part.CUSTOMER,
        Part.TEAM_REPLY,
    ]
    assert story.customer_messages == 2
    assert story.entries[0].text == "My invoice 4711 is wrong: VAT twice.\n\nAnn"
    assert story.entries[0].title == "Ann <ann@customer.example> wrote"
    second = story.entries[8]
    assert second.text == "Any news?"  # quoted history trimmed
    fates = [e.fate for e in story.entries if e.part is Part.PROMISE]
    assert fates == ["replaced by a later promise, announced in time", "kept"]


@given(st.permutations([REPLY, SECOND, ROBOT, FIRST]), st.permutations(list(EVENTS)))
def test_the_order_is_total_whatever_order_the_store_returns(
    messages: list[StoryMessage], events: list[Event]
) -> None:
    reference = build_story("KW-1", CaseRecord([FIRST, SECOND, REPLY], [], EVENTS), now=story_now())
    shuffled = build_story("KW-1", CaseRecord(messages, [], events), now=story_now())
    assert [(e.at, e.part, e.title, e.text) for e in shuffled.entries] == [
        (e.at, e.part, e.title, e.text) for e in reference.entries
    ]


def test_the_promise_just_made_is_flagged() -> None:
    new = StoryPromise(
        12,
        story_now(),
        story_now() + timedelta(hours=5),
        PromiseKind.UPDATE,
        PromiseAudience.CUSTOMER,
        PromiseState.OPEN,
        set_by="bob@shop.example",
    )
    record = CaseRecord([FIRST], [FIRST_PROMISE], ())
    story = build_story("KW-1", record, now=story_now(), new_promise=new)
    assert story.just_promised == new.due_at
    last = story.entries[-1]
    assert last.is_new and last.fate == "open" and "(set by bob@shop.example)" in last.title


def test_promise_fates() -> None:
    open_one = StoryPromise(
        1, T0, T0 + timedelta(hours=1), PromiseKind.FIRST_RESPONSE, PromiseAudience.TEAM,
        PromiseState.OPEN,
    )  # fmt: skip
    assert promise_fate(open_one, T0) == "open"
    assert promise_fate(open_one, T0 + timedelta(hours=2)) == "open, overdue"
    for state, word in [
        (PromiseState.BROKEN, "broken"),
        (PromiseState.WITHDRAWN, "withdrawn"),
    ]:
        done = StoryPromise(1, T0, T0, PromiseKind.UPDATE, PromiseAudience.CUSTOMER, state)
        assert promise_fate(done, T0) == word


def test_trim_quoted() -> None:
    german = "Danke!\n\nAm 23.11.2026 um 10:00 schrieb Support <support@shop.example>:\n> Hallo"
    assert trim_quoted(german) == "Danke!"
    outlook = "Top\n\n-----Original Message-----\nFrom: a@b.example\nSent: x\n\nold"
    assert trim_quoted(outlook) == "Top"
    bare = "Answer\n> quoted line\n>> older\nmore"
    assert trim_quoted(bare) == "Answer\nmore"
    assert trim_quoted("> only a quote") == "> only a quote"
    long = "\n".join(f"line {i}" for i in range(100))
    cut = trim_quoted(long, max_lines=3)
    assert cut == "line 0\nline 1\nline 2\n[...]"
    assert trim_quoted("x" * 5000, max_chars=100).endswith("[...]")
    assert len(trim_quoted("x" * 5000, max_chars=100)) < 120


def test_story_templates_render_text_and_html() -> None:
    record = CaseRecord([FIRST, SECOND, REPLY], [FIRST_PROMISE, UPDATED], EVENTS)
    story = build_story("KW-1", record, now=story_now()).in_zone(BERLIN)
    renderer = Renderer()
    text = renderer._env.get_template("en/_story.txt.j2").render(story=story, language="en")
    assert "The whole story of KW-1" in text
    assert "> My invoice 4711 is wrong: VAT twice." in text
    assert "Internal note" in text and "asked accounting" in text
    assert "[kept]" in text and "Europe/Berlin" in text
    assert text.index("My invoice") < text.index("Any news?") < text.index("Fixed, sorry!")
    assert "We received your message" not in text
    html = renderer._env.get_template("en/_story.html.j2").render(story=story, language="en")
    assert "<table" in html and "Internal note" in html
    assert "&lt;ann@customer.example&gt;" in html  # escaped: a name cannot inject markup


def test_escalation_with_a_new_promise_names_it_up_front() -> None:
    new = StoryPromise(
        12, story_now(), story_now() + timedelta(hours=5), PromiseKind.UPDATE,
        PromiseAudience.CUSTOMER, PromiseState.OPEN,
    )  # fmt: skip
    record = CaseRecord([FIRST], [], ())
    story = build_story("KW-1", record, now=story_now(), new_promise=new).in_zone(BERLIN)
    text = Renderer()._env.get_template("en/_story.txt.j2").render(story=story, language="en")
    assert text.index("NEW: the customer was just told") < text.index("My invoice")
    assert "[just now]" in text


# -- the story in reminders and escalations (mail/render) ----------------------------------

EVE = StoryMessage(
    5,
    T0 + timedelta(days=1, hours=3),
    Kind.CUSTOMER,
    "eve@customer.example",
    '<script>alert("x")</script><img src="https://evil.example/p.gif">\n</td></tr></table>'
    "<h1>Approved</h1> & more",
    "<b>Eve</b>",
)


def team_context(story: Story | None) -> TeamCaseContext:
    return TeamCaseContext(
        reference="KW-1",
        customer="ann@customer.example",
        customer_name="Ann",
        subject="Invoice <4711>",
        opened_local=T0.astimezone(BERLIN),
        age_text="2 days 0 h",
        promised_local=UPDATED.due_at.astimezone(BERLIN),
        promise_made_local=UPDATED.made_at.astimezone(BERLIN),
        is_default=False,
        owner="bob@shop.example",
        reason="90% of the promised business time has passed",
        last_message=EVE.body_text,
        last_message_at=EVE.at.astimezone(BERLIN),
        mailbox_address="support@shop.example",
        done_folder="Done",
        story=story,
    )


def hostile_story(new_promise: StoryPromise | None = None) -> Story:
    record = CaseRecord([FIRST, SECOND, REPLY, EVE], [FIRST_PROMISE, UPDATED], EVENTS)
    return build_story("KW-1", record, now=story_now(), new_promise=new_promise).in_zone(BERLIN)


def test_a_team_mail_tells_the_story_in_order_as_text_and_html() -> None:
    for name in ("reminder", "escalation"):
        out = Renderer().render(name, "en", team_context(hostile_story()))
        story_text = out.text[out.text.index("The whole story of KW-1") :]
        assert story_text.index("> My invoice 4711") < story_text.index("> Any news?")
        assert story_text.index("> Any news?") < story_text.index("Fixed, sorry!")
        assert story_text.index("Fixed, sorry!") < story_text.index("> <script>")
        assert "asked accounting" in story_text and "mallory@evil.test" in story_text
        assert "Monday, November 23, 2026, 10:00 (Europe/Berlin)" in story_text
        assert out.text.rstrip().endswith("Case reference: KW-1")
        assert out.html is not None
        html = out.html
        assert html.index("My invoice 4711") < html.index("Any news?") < html.index("Fixed, sorry!")
        assert "The whole story of KW-1" in html and "[kept]" in html


def test_hostile_customer_text_is_escaped_in_the_html_timeline() -> None:
    for language in ("en", "de"):
        html = Renderer().render("escalation", language, team_context(hostile_story())).html
        assert html is not None
        for markup in ("<script", "<img", "<h1>", "<b>Eve", "</td></tr></table><h1>", "<4711>"):
            assert markup not in html, (language, markup)
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
        assert "&lt;b&gt;Eve&lt;/b&gt; &lt;eve@customer.example&gt;" in html  # the name too
        assert "Invoice &lt;4711&gt;" in html
        assert (
            "&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;&lt;h1&gt;Approved&lt;/h1&gt; &amp; more" in html
        )
        # A line break in the text is a <br>: Outlook ignores white-space: pre-wrap.
        assert "&gt;<br>\n&lt;/td&gt;" in html
        assert "<style" not in html and "http" not in html.replace("https://evil.example", "")


def test_without_a_story_the_team_mail_quotes_the_last_message() -> None:
    out = Renderer().render("reminder", "en", team_context(None))
    assert "The whole story" not in out.text and "> <script>" in out.text
    assert out.html is not None and "Last message from the customer" in out.html
    assert "&lt;script&gt;" in out.html and "<script" not in out.html


def test_an_escalation_with_an_update_names_the_new_time_in_both_parts() -> None:
    new = StoryPromise(
        12, story_now(), story_now() + timedelta(hours=5), PromiseKind.UPDATE,
        PromiseAudience.CUSTOMER, PromiseState.OPEN,
    )  # fmt: skip
    out = Renderer().render("escalation", "en", team_context(hostile_story(new)))
    when = "Wednesday, November 25, 2026, 15:00 (Europe/Berlin)"
    assert f"NEW: the customer was just told to expect us by {when}." in out.text
    assert out.html is not None and f"<strong>{when}</strong>" in out.html
    assert "[just now]" in out.text and "[just now]" in out.html


def test_german_team_mails_tell_the_story_in_german() -> None:
    new = StoryPromise(
        12, story_now(), story_now() + timedelta(hours=5), PromiseKind.UPDATE,
        PromiseAudience.CUSTOMER, PromiseState.OPEN, set_by="bob@shop.example",
    )  # fmt: skip
    context = team_context(hostile_story(new))
    reminder = Renderer().render("reminder", "de", context)
    assert reminder.text.startswith("Erinnerung zu Vorgang KW-1")
    escalation = Renderer().render("escalation", "de", context)
    text = escalation.text
    assert text.startswith("Eskalation zu Vorgang KW-1")
    assert "Der ganze Verlauf von KW-1" in text
    assert "Ann <ann@customer.example> schrieb" in text and "bob@shop.example antwortete" in text
    assert "Montag, 23. November 2026, 10:00 (Europe/Berlin)" in text
    assert "NEU: Dem Kunden wurde soeben eine Antwort bis Mittwoch, 25. November 2026" in text
    assert "[eingehalten]" in text and "Interne Notiz" in text and "[soeben]" in text
    assert "(gesetzt von bob@shop.example)" in text
    assert "Case reference: KW-1" in text  # the marker threading relies on stays
    assert escalation.html is not None and 'lang="de"' in escalation.html
    assert "Der ganze Verlauf von KW-1" in escalation.html and "Interne Notiz" in escalation.html
    # English words only for what has no German (stored event details stay as written).
    assert "wrote" not in text and "Promised" not in text.split("Der ganze Verlauf")[1]


def test_a_language_without_story_partials_falls_back_to_english(tmp_path: Path) -> None:
    (tmp_path / "fr").mkdir()
    (tmp_path / "fr" / "reminder.txt.j2").write_text(
        'Rappel {{ reference }}\n{% include [language ~ "/_story.txt.j2", "en/_story.txt.j2"] %}'
    )
    out = Renderer(mailbox_dir=tmp_path).render("reminder", "fr", team_context(hostile_story()))
    assert out.text.startswith("Rappel KW-1") and "Ann <ann@customer.example> wrote" in out.text
    assert "novembre" in out.text  # French dates: the template's language


def test_a_long_story_says_how_many_messages_it_left_out() -> None:
    story = replace(hostile_story(), messages_left_out=475)
    out = Renderer().render("reminder", "en", team_context(story))
    assert "(475 earlier messages of this long case not shown" in out.text
    assert out.html is not None and "475 earlier messages" in out.html
    german = Renderer().render("reminder", "de", team_context(story))
    assert "475 frühere Nachrichten" in german.text


def test_mail_that_was_not_simply_sent_is_in_the_story() -> None:
    events = (
        Event(EventKind.ACKNOWLEDGEMENT, T0, None, "told ann a reply is due by ..."),
        Event(EventKind.DEFERRED, T0, None, "acknowledgement deferred until 10:00"),
        Event(EventKind.REMINDER, T0 + timedelta(hours=4), None, "50%: to bob@shop.example"),
        Event(EventKind.WITHDRAWN, T0 + timedelta(hours=5), None, "customer_update not sent"),
        Event(EventKind.STAFF_REPLY, T0 + timedelta(hours=6), "bob@shop.example", "reply"),
    )
    story = build_story("KW-1", CaseRecord([FIRST], [], events), now=story_now())
    assert [e.title for e in story.entries] == [
        "Ann <ann@customer.example> wrote",
        "Acknowledgement sent to the customer",
        "Held back by a rate limit",
        "Reminder sent",
        "Queued mail not sent",  # the staff reply itself is told by its message
    ]
    german = (
        Renderer()
        ._env.get_template("de/_story.txt.j2")
        .render(story=story.in_zone(BERLIN), language="de")
    )
    assert "Vorgemerkte E-Mail nicht gesendet" in german and "Erinnerung gesendet" in german


def test_text_that_would_reorder_or_hide_itself_is_shown_plainly() -> None:
    sneaky = StoryMessage(
        6,
        T0,
        Kind.CUSTOMER,
        "eve@customer.example",
        "Refund \u202eapproved\u202c by lead\x1b[2J\x00\r\nthanks\tEve",
        "Eve\u2067 Lead\u2069\r\nX-Injected: 1",
    )
    refused = Event(EventKind.REFUSED, T0, "mallory@evil.test", "refused: subject \u202eKW-1\x07")
    story = build_story("KW-1", CaseRecord([sneaky], [], (refused,)), now=T0)
    message, refusal = story.entries
    assert message.text == "Refund approved by lead[2J\nthanks\tEve"
    assert message.title == "Eve Lead X-Injected: 1 <eve@customer.example> wrote"
    assert refusal.text == "refused: subject KW-1"


def test_who_did_it_is_named_for_notes_owners_and_refusals() -> None:
    story = build_story("KW-1", CaseRecord([], [], EVENTS), now=story_now())
    text = (
        Renderer()
        ._env.get_template("en/_story.txt.j2")
        .render(story=story.in_zone(BERLIN), language="en")
    )
    assert "Internal note (bob@shop.example)\n    asked accounting" in text
    assert "Refused (mallory@evil.test)" in text
    assert "Acknowledgement sent to the customer\n" in text  # keepword itself: no name
    german = (
        Renderer()
        ._env.get_template("de/_story.txt.j2")
        .render(story=story.in_zone(BERLIN), language="de")
    )
    assert "Interne Notiz (bob@shop.example)" in german
