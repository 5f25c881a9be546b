"""Owner policies, people away, out-of-office return dates (domain.owners)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.cases import CaseState, EventKind
from keepword.domain.model import CaseStatus
from keepword.domain.owners import (
    AwayPeriod,
    OwnerChoice,
    OwnerPolicy,
    Roster,
    Sharing,
    assign_on_open,
    back_again,
    choose_owner,
    mark_away,
    move_cases,
    on_duty,
    return_date,
)
from keepword.trust_settings import TrustSettings

BERLIN = ZoneInfo("Europe/Berlin")
HOLIDAY = date(2026, 12, 25)  # Friday
# Mon 2026-12-21 .. Sun 2026-12-27: open Mon-Fri, closed on the holiday.
CALENDAR = BusinessCalendar(BERLIN, {d: [(time(9), time(17))] for d in range(5)}, [HOLIDAY])
ANN, BOB, CAT = "ann@shop.example", "bob@shop.example", "cat@shop.example"
VACATION = AwayPeriod(BOB, date(2026, 12, 22), date(2026, 12, 24), "planned")
ROSTER = Roster((ANN, BOB, CAT), (VACATION,), {CAT: frozenset({0, 4})})  # Cat: Mon, Fri


def at(day: int, hour: int = 10) -> datetime:
    return datetime(2026, 12, day, hour, 0, tzinfo=BERLIN)


def test_on_duty_through_a_week_with_a_holiday_and_a_vacation() -> None:
    seen = {day: on_duty(ROSTER, CALENDAR, at(day)) for day in range(21, 28)}
    assert seen[21] == (date(2026, 12, 21), (ANN, BOB, CAT))  # Monday: all three
    assert seen[22] == (date(2026, 12, 22), (ANN,))  # Bob away, Cat off
    assert seen[23] == (date(2026, 12, 23), (ANN,))
    assert seen[24] == (date(2026, 12, 24), (ANN, BOB))  # Bob back
    # Friday is the holiday: the next open day is Monday the 28th, Cat works Mondays.
    assert seen[25] == (date(2026, 12, 28), (ANN, BOB, CAT))
    assert seen[26] == seen[27] == seen[25]


def test_a_case_at_night_goes_to_someone_working_next_morning() -> None:
    day, working = on_duty(ROSTER, CALENDAR, at(21, 22))
    assert day == date(2026, 12, 22) and working == (ANN,)


def test_round_robin_skips_people_not_on_duty() -> None:
    choices = []
    last = None
    for day in (21, 21, 21, 22, 24, 24):
        choice = choose_owner(Sharing(OwnerPolicy.ROUND_ROBIN, {}, last), ROSTER, CALENDAR, at(day))
        choices.append(choice.owner)
        last = choice.owner
    assert choices == [ANN, BOB, CAT, ANN, BOB, ANN]


def test_least_open_picks_the_fewest_open_cases_ties_in_roster_order() -> None:
    counts = {ANN: 3, BOB: 1, CAT: 1}
    least = Sharing(OwnerPolicy.LEAST_OPEN, counts)
    choice = choose_owner(least, ROSTER, CALENDAR, at(21))
    assert choice.owner == BOB and "fewest open cases (1)" in choice.reason
    # Tuesday only Ann works: she gets it however many she has.
    tuesday = choose_owner(least, ROSTER, CALENDAR, at(22))
    assert tuesday.owner == ANN


def test_policy_none_and_nobody_on_duty() -> None:
    none = choose_owner(Sharing(OwnerPolicy.NONE), ROSTER, CALENDAR, at(21))
    assert none.owner is None
    everyone_away = Roster((ANN,), (AwayPeriod(ANN, date(2026, 12, 1), None),))
    nobody = choose_owner(Sharing(OwnerPolicy.LEAST_OPEN), everyone_away, CALENDAR, at(21))
    assert nobody.owner is None and "nobody" in nobody.reason


def case(number: int, owner: str | None) -> CaseState:
    return CaseState(
        id=number,
        mailbox="support",
        reference=f"KW-{number}",
        status=CaseStatus.WAITING_ON_TEAM,
        opened_at=at(21, 9),
        updated_at=at(21, 9),
        owner=owner,
    )


def test_assign_on_open_records_the_owner_or_why_none() -> None:
    opened = assign_on_open(case(1, None), OwnerChoice(ANN, "round robin"), at(21))
    assert opened.case.owner == ANN
    assert opened.events[0].kind is EventKind.OWNER_CHANGED
    assert "owner policy: round robin" in opened.events[0].detail
    nobody = assign_on_open(case(2, None), OwnerChoice(None, "policy none"), at(21))
    assert nobody.case.owner is None and "no owner" in nobody.events[0].detail


def test_out_of_office_moves_open_cases_and_tells_the_lead_once() -> None:
    text = "I am out of the office until 30 December and back on 31.12.2026."
    period = mark_away(ANN, text, received=at(21, 11), zone=BERLIN)
    assert period == AwayPeriod(
        ANN, date(2026, 12, 21), date(2026, 12, 31), "out-of-office auto-reply"
    )
    open_cases = [case(1, ANN), case(2, ANN), case(3, BOB)]
    sharing = Sharing(OwnerPolicy.ROUND_ROBIN, {ANN: 2, BOB: 1}, last_assigned=ANN)
    notice = move_cases(period, open_cases, sharing, ROSTER, CALENDAR, at(21, 11))
    owners = [m.case.owner for m in notice.moves]
    assert owners == [BOB, CAT]  # Monday: Bob and Cat on duty; round robin after Ann
    for move in notice.moves:
        kinds = [e.kind for e in move.events]
        assert kinds == [EventKind.AWAY, EventKind.OWNER_CHANGED]
    assert notice.lead_message is not None
    assert "KW-1 -> bob@shop.example" in notice.lead_message
    # The same out-of-office again (it answers every mail): nothing new to record.
    assert mark_away(ANN, text, received=at(21, 15), zone=BERLIN, known=[period]) is None


def test_nobody_to_take_the_cases() -> None:
    alone = Roster((ANN,))
    period = AwayPeriod(ANN, date(2026, 12, 21), None)
    notice = move_cases(period, [case(1, ANN)], Sharing(OwnerPolicy.NONE), alone, CALENDAR, at(21))
    assert notice.moves[0].case.owner == ANN
    assert notice.lead_message is not None and "Nobody on duty to take: KW-1" in notice.lead_message


def test_back_again_ends_open_ended_absences_only() -> None:
    periods = (AwayPeriod(ANN, date(2026, 12, 21), None), VACATION)
    after = back_again(periods, ANN, date(2026, 12, 23))
    assert after[0].back_on == date(2026, 12, 23) and after[1] == VACATION


TODAY = date(2026, 12, 21)


@pytest.mark.parametrize(
    ("text", "back"),
    [
        ("I will be back on March 3rd.", date(2027, 3, 3)),
        ("I'm out of the office until Monday, January 4, 2027.", date(2027, 1, 5)),
        ("Returning 2027-01-07. For urgent matters call Bob.", date(2027, 1, 7)),
        ("Away from 22 December until 2 January.", date(2027, 1, 3)),
        ("Ich bin bis einschließlich 8. Januar nicht im Büro.", date(2027, 1, 9)),
        ("Ab dem 11.01.2027 bin ich wieder erreichbar.", date(2027, 1, 11)),
        ("Ich bin ab 11.1. wieder im Büro.", date(2027, 1, 11)),
        ("Wieder da am 4. Januar 2027", date(2027, 1, 4)),
        ("Out of office until 30/12/2026", date(2026, 12, 31)),
    ],
)
def test_return_dates(text: str, back: date) -> None:
    assert return_date(text, TODAY) == back


@pytest.mark.parametrize(
    "text",
    [
        "Thank you for your message. I am out of the office.",
        "Back on 3/4/2027",  # March 4 or April 3: no guess
        "I was back on 2026-11-02.",  # in the past
        "Meeting on 2027-01-07 about invoices.",  # a date, but not a return
    ],
)
def test_no_return_date(text: str) -> None:
    assert return_date(text, TODAY) is None


def test_trust_settings_policy() -> None:
    settings = TrustSettings.model_validate(
        {"dkim_domains": ["Shop.example."], "trusted_authserv_ids": ["MX.shop.example"]}
    )
    policy = settings.policy(frozenset({ANN}), frozenset({"support@shop.example"}))
    assert policy.dkim_domains == frozenset({"shop.example"})
    assert policy.trusted_authserv_ids == frozenset({"mx.shop.example"})


@pytest.mark.parametrize(
    "bad",
    [
        {"owner_policy": "least_open"},  # owners are [mailbox.owners], not trust
        {"dkim_domains": ["not a domain"]},
        {"trusted_authserv_ids": ["mx example"]},
        {"unknown_key": 1},
    ],
)
def test_trust_settings_refuse_mistakes(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TrustSettings.model_validate(bad)


def test_clock_is_aware() -> None:
    assert at(21).astimezone(UTC) - at(21) == timedelta(0)


# -- wiring helpers (issue 12 part 2, issue 13's `away`) --------------------------------


def test_away_share_counts_an_absence_from_its_first_day_once() -> None:
    from keepword.domain.owners import away_share

    two = Roster((ANN, BOB))
    away = Roster((ANN, BOB), (AwayPeriod(BOB, date(2026, 12, 14), date(2027, 1, 4)),))
    assert away_share(two, CALENDAR, at(14)) == 0.0
    assert away_share(away, CALENDAR, at(14)) == pytest.approx(0.5)  # first day: half
    # a week on, the pace already shows it: not counted twice
    assert away_share(away, CALENDAR, at(22)) == 0.0
    back = Roster((ANN, BOB), (AwayPeriod(BOB, date(2026, 12, 7), date(2026, 12, 14)),))
    assert away_share(back, CALENDAR, at(14)) == 0.0  # more staff than lately: never < 0
    assert away_share(Roster(()), CALENDAR, at(14)) == 0.0


def test_staff_out_of_office_needs_a_member_an_auto_reply_and_live_mail() -> None:
    from keepword.domain.model import Address, Kind, MessageFacts
    from keepword.domain.owners import staff_out_of_office

    def facts(sender: str, headers: dict[str, tuple[str, ...]], **kw: object) -> MessageFacts:
        return MessageFacts(
            pk=1, mailbox="m", message_id="x", sender=Address(sender), headers=headers, **kw
        )  # type: ignore[arg-type]

    replied = {"auto-submitted": ("auto-replied",)}
    assert staff_out_of_office(facts(BOB, replied), Kind.AUTOMATED, (ANN, BOB))
    assert staff_out_of_office(facts("x@customer.example", replied), Kind.AUTOMATED, (BOB,)) is None
    assert staff_out_of_office(facts(BOB, replied), Kind.STAFF, (BOB,)) is None
    assert staff_out_of_office(facts(BOB, replied, is_history=True), Kind.AUTOMATED, (BOB,)) is None
    generated = {"auto-submitted": ("auto-generated",)}  # a robot report, not a vacation
    assert staff_out_of_office(facts(BOB, generated), Kind.AUTOMATED, (BOB,)) is None
    vacation = facts(BOB, {}, subject="Out of office: Re: [KW-4] help")
    assert staff_out_of_office(vacation, Kind.AUTOMATED, (BOB,))


def test_one_absence_per_out_of_office_run_and_a_new_date_keeps_its_start() -> None:
    from keepword.domain.owners import absence_from_auto_reply

    first = absence_from_auto_reply(
        BOB, "Back on 4 January 2027.", received=at(21), zone=BERLIN, recorded=(), default_days=7
    )
    assert first == AwayPeriod(
        BOB, date(2026, 12, 21), date(2027, 1, 4), "out-of-office auto-reply"
    )
    again = absence_from_auto_reply(
        BOB,
        "Back on 4 January 2027.",
        received=at(22),
        zone=BERLIN,
        recorded=(first,),
        default_days=7,
    )
    assert again is None
    later = absence_from_auto_reply(
        BOB,
        "Back on 11 January 2027.",
        received=at(23),
        zone=BERLIN,
        recorded=(first,),
        default_days=7,
    )
    assert later is not None and (later.start, later.back_on) == (
        date(2026, 12, 21),
        date(2027, 1, 11),
    )
    vague = absence_from_auto_reply(
        BOB, "I am away.", received=at(21), zone=BERLIN, recorded=(), default_days=7
    )
    assert (
        vague is not None and vague.back_on == date(2026, 12, 28) and "no return date" in vague.why
    )
