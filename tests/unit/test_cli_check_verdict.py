"""`keepword check`'s reading of the relay's replies about the sender and the team."""

from __future__ import annotations

from keepword.cli.check import recipients_verdict

SENDER = "support@example.com"
OK = (250, "OK")


def test_everyone_accepted() -> None:
    text, refused = recipients_verdict(SENDER, {SENDER: OK, "a@x.org": OK, "b@x.org": OK})
    assert (text, refused) == (f"sender {SENDER} and 2 of 2 team address(es) accepted", False)


def test_a_team_address_refused_for_good_fails_a_deferred_one_does_not() -> None:
    replies = {SENDER: OK, "a@x.org": (550, "no such user"), "b@x.org": (451, "later")}
    text, refused = recipients_verdict(SENDER, replies)
    assert refused
    assert "0 of 2 team address(es) accepted" in text
    assert "refused for good: a@x.org (550 no such user)" in text
    assert "not verified now: b@x.org (451 later)" in text
    text, refused = recipients_verdict(SENDER, {SENDER: OK, "b@x.org": (451, "later")})
    assert not refused and "not verified now" in text


def test_the_sender_refused_fails_before_any_recipient() -> None:
    text, refused = recipients_verdict(SENDER, {SENDER: (553, "not yours")})
    assert refused and text == f"the relay refuses {SENDER} as sender: 553 not yours"
    text, refused = recipients_verdict(SENDER, {SENDER: (421, "busy")})
    assert not refused and text == f"sender {SENDER} not verified now: 421 busy"


def test_no_team_only_the_sender() -> None:
    assert recipients_verdict(SENDER, {SENDER: OK}) == (f"sender {SENDER} accepted", False)


def test_a_policy_refusal_points_at_the_relay_not_the_team() -> None:
    replies = {SENDER: OK, "a@x.org": (554, "5.7.1 Relay access denied")}
    text, refused = recipients_verdict(SENDER, replies)
    assert refused and text.endswith("(check the relay's settings for this sender)")
    replies = {SENDER: OK, "a@x.org": (550, "5.1.1 no such user")}
    assert recipients_verdict(SENDER, replies)[0].endswith("(check the mailbox's team or lead)")
