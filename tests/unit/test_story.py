"""The whole story of a case (domain.story) and its templates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from keepword.domain.cases import Event, EventKind
from keepword.domain.model import Kind, PromiseAudience, PromiseKind, PromiseState
from keepword.domain.story import (
    Part,
    StoryMessage,
    StoryPromise,
    build_story,
    promise_fate,
    trim_quoted,
)
from keepword.mail.render import Renderer

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
    story = build_story(
        "KW-1",
        messages=[REPLY, SECOND, ROBOT, FIRST],
        promises=[UPDATED, FIRST_PROMISE],
        events=EVENTS,
        now=story_now(),
    )
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
    reference = build_story(
        "KW-1", messages=[FIRST, SECOND, REPLY], promises=[], events=EVENTS, now=story_now()
    )
    shuffled = build_story("KW-1", messages=messages, promises=[], events=events, now=story_now())
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
    story = build_story(
        "KW-1", messages=[FIRST], promises=[FIRST_PROMISE], events=(), new_promise=new,
        now=story_now(),
    )  # fmt: skip
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
    story = build_story(
        "KW-1",
        messages=[FIRST, SECOND, REPLY],
        promises=[FIRST_PROMISE, UPDATED],
        events=EVENTS,
        new_promise=None,
        now=story_now(),
    ).in_zone(BERLIN)
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
    story = build_story(
        "KW-1", messages=[FIRST], promises=[], events=(), new_promise=new, now=story_now()
    ).in_zone(BERLIN)
    text = Renderer()._env.get_template("en/_story.txt.j2").render(story=story, language="en")
    assert text.index("NEW: the customer was just told") < text.index("My invoice")
    assert "[just now]" in text
