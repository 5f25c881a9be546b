"""Issue 12 wired into the shell, on a real SQLite store without mail servers: the
sender's standing (pipeline.standing), joins vetted in triage, keyed outgoing
Message-IDs, message identity per sender, the salvaged From address."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from keepword.domain.model import Kind, OutboxKind
from keepword.domain.trust import Standing
from keepword.mail import authentication, parse
from keepword.mail.compose import About, Answering, customer_mail
from keepword.mail.render import Rendered
from keepword.pipeline import standing
from keepword.store import cases as case_store
from keepword.store.messages import load_facts
from keepword.store.outbox import enqueue_mail, own_mail
from keepword.store.secret import message_id_secret
from keepword.store.tables import case, case_event, message, outbox
from tests.fixtures.chase_store import ALICE, StoreDesk
from tests.fixtures.desk import SUPPORT, TEAM_MX, TEAM_PROOF, mail

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
ANN = ("Ann Lee", "ann@example.org")
MALLORY = ("Mallory", "mallory@evil.test")


def at(minutes: int) -> datetime:
    return NOW + timedelta(minutes=minutes)


@pytest.fixture
def desk(tmp_path: Path) -> StoreDesk:
    return StoreDesk(tmp_path, trust={"trusted_authserv_ids": [TEAM_MX]})


def _rows(desk: StoreDesk, message_id: str) -> list[Any]:
    with desk.engine.connect() as conn:
        query = select(message).where(message.c.message_id == message_id.strip("<>"))
        return list(conn.execute(query.order_by(message.c.id)))


def _judge(desk: StoreDesk, msg: EmailMessage, folder: str = "INBOX") -> standing.Judged:
    desk.deliver(msg, NOW, folder)
    [row] = _rows(desk, msg["Message-ID"])[-1:]
    with desk.engine.connect() as conn:
        [facts] = load_facts(conn, [row.id])
        from keepword.domain.classify import classify

        ctx = desk.desk_at(NOW)
        verdict = classify(facts, team=desk.box.team_addresses(), own_addresses=ctx.own_addresses)
        return standing.judge(conn, ctx, facts, verdict, own_mail(conn, facts.message_id))


# -- standing ------------------------------------------------------------------------------


def test_team_standing_needs_a_proof(desk: StoreDesk) -> None:
    sent = _judge(desk, mail(("Alice", ALICE), "Re: x", to=ANN[1], date=NOW), "Sent")
    assert sent.sender.standing is Standing.TEAM and sent.verdict.kind is Kind.STAFF
    vouched = _judge(desk, mail(("Alice", ALICE), "Re: y", cc=SUPPORT, headers=TEAM_PROOF))
    assert vouched.sender.standing is Standing.TEAM and "Authentication-Results" in (
        vouched.sender.reason
    )
    bare = _judge(desk, mail(("Alice", ALICE), "Re: z", cc=SUPPORT))
    assert bare.sender.standing is Standing.PERSON and bare.sender.claimed_team
    assert bare.verdict.kind is Kind.CUSTOMER and "without proof" in bare.verdict.reason
    forged_server = {"Authentication-Results": TEAM_PROOF["Authentication-Results"].replace(
        TEAM_MX, "mx.evil.test"
    )}  # fmt: skip
    other = _judge(desk, mail(("Alice", ALICE), "Re: w", cc=SUPPORT, headers=forged_server))
    assert other.sender.standing is Standing.PERSON


def test_without_trust_settings_nothing_is_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    desk = StoreDesk(tmp_path, trust={})  # the shipped default: only the Sent folder proves

    def never(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("verified although nothing is configured")

    monkeypatch.setattr(standing, "verify_as_configured", never)
    judged = _judge(desk, mail(("Alice", ALICE), "Re: y", cc=SUPPORT, headers=TEAM_PROOF))
    assert judged.sender.standing is Standing.PERSON


def test_dkim_is_verified_only_when_team_domains_are_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bool] = []
    real = authentication.verify_dkim

    def counting(raw: bytes, dns: Any = None) -> Any:
        calls.append(True)
        return real(raw, dns=lambda *_a, **_k: None)

    monkeypatch.setattr(authentication, "verify_dkim", counting)
    _judge(StoreDesk(tmp_path / "a", trust={"trusted_authserv_ids": [TEAM_MX]}), _alice())
    assert calls == []
    _judge(StoreDesk(tmp_path / "b", trust={"dkim_domains": ["example.com"]}), _alice())
    assert calls == [True]
    _judge(StoreDesk(tmp_path / "c", trust={"dkim_domains": ["example.com"]}), _customer())
    assert calls == [True], "a customer's mail without Reply-To is never verified"


def _alice() -> EmailMessage:
    return mail(("Alice", ALICE), "Re: y", cc=SUPPORT)


def _customer() -> EmailMessage:
    return mail(ANN, "Hello")


# -- joins and correspondents --------------------------------------------------------------


def _events(desk: StoreDesk, reference: str) -> list[tuple[str, str]]:
    with desk.engine.connect() as conn:
        found = case_store.find_case(conn, reference)
        assert found is not None and found.id is not None
        query = select(case_event.c.kind, case_event.c.detail).where(
            case_event.c.case_id == found.id
        )
        return [(k, d or "") for k, d in conn.execute(query)]


def test_a_reply_to_never_becomes_a_correspondent_nor_a_recipient(tmp_path: Path) -> None:
    desk = StoreDesk(tmp_path, promise={"follow_up_notes": True})
    question = desk.deliver(mail(ANN, "Invoice", date=at(0)), at(0))
    desk.triage(at(0))
    desk.drain(at(0))
    follow = mail(ANN, "Re: Invoice [KW-1]", "still?", date=at(5), reply_to=question)
    follow["Reply-To"] = MALLORY[1]
    desk.deliver(follow, at(5))
    desk.triage(at(5))
    refused = [d for k, d in _events(desk, "KW-1") if k == "refused"]
    assert refused and "Reply-To mallory@evil.test is not on KW-1" in refused[0]
    # ann writes again (no Reply-To): joins; the note goes to the customer of record
    desk.deliver(mail(ANN, "Re: Invoice [KW-1]", "hello?", date=at(9), reply_to=question), at(9))
    desk.triage(at(9))
    with desk.engine.connect() as conn:
        kw1 = conn.execute(select(case).where(case.c.reference == "KW-1")).one()
        people = case_store.case_candidates(conn, [kw1.id])[kw1.id].correspondents
        query = select(outbox.c.kind, outbox.c.recipients).where(outbox.c.case_id == kw1.id)
        about_kw1 = [(kind, list(to)) for kind, to in conn.execute(query)]
    assert people == frozenset({ANN[1]}) and kw1.customer == ANN[1]
    assert ("follow_up_note", [ANN[1]]) in about_kw1
    assert all(to == [ANN[1]] for _kind, to in about_kw1), about_kw1


def test_a_tag_named_by_a_stranger_is_refused_on_its_case(desk: StoreDesk) -> None:
    desk.deliver(mail(ANN, "Invoice", date=at(0)), at(0))
    desk.triage(at(0))
    desk.deliver(mail(MALLORY, "[KW-1] hello", date=at(1)), at(1))
    result = desk.triage(at(1))
    assert result.opened == 1
    [(_, detail)] = [e for e in _events(desk, "KW-1") if e[0] == "refused"]
    assert detail.startswith("refused: mallory@evil.test tried to join by tag")


# -- keyed Message-IDs -----------------------------------------------------------------------


def test_outgoing_message_ids_are_keyed_with_the_stores_secret(tmp_path: Path) -> None:
    one, two = StoreDesk(tmp_path / "one"), StoreDesk(tmp_path / "two")
    ids = []
    for desk in (one, two):
        mail_ = customer_mail(
            desk.box,
            OutboxKind.ACKNOWLEDGEMENT,
            dedup_key="ack:1",
            about=About("KW-1", "Invoice"),
            now=NOW,
            answering=Answering(ANN[1]),
        )
        with desk.engine.begin() as conn:
            secret = message_id_secret(conn)
            assert len(secret) == 32 and message_id_secret(conn) == secret
            assert enqueue_mail(conn, mail_, Rendered("Hello\n"), mailbox="support", case_id=None)
            ids.append(conn.execute(select(outbox.c.message_id)).scalar_one())
    assert all(i.startswith("kw2.") and i.endswith("@example.com") for i in ids)
    assert ids[0] != ids[1], "another installation, another id: nobody can compute one"
    assert mail_.message_id.startswith("kw."), "without a secret (previews): the old scheme"


# -- identity --------------------------------------------------------------------------------


def test_same_message_id_and_body_from_another_sender_is_stored_apart(desk: StoreDesk) -> None:
    first = desk.deliver(mail(ANN, "Invoice", date=at(0)), at(0))
    copy = mail(MALLORY, "Invoice", date=at(0))
    copy.replace_header("Message-ID", first["Message-ID"])
    desk.deliver(copy, at(1))
    desk.deliver(first, at(2))  # the same message delivered again: no new row
    desk.deliver(copy, at(3))
    rows = _rows(desk, first["Message-ID"])
    assert [r.from_addr for r in rows] == [ANN[1], MALLORY[1]]
    result = desk.triage(at(4))
    assert result.triaged == 2 and result.opened == 2


def test_mail_without_a_usable_sender_opens_no_case_and_is_counted(desk: StoreDesk) -> None:
    nobody = mail(("Root", "root@localhost"), "Cron output", date=at(0))
    desk.deliver(nobody, at(0))
    result = desk.triage(at(2))
    assert (result.triaged, result.opened, result.unusable) == (1, 0, 1)
    [row] = _rows(desk, nobody["Message-ID"])
    assert row.case_id is None and row.kind_reason.startswith("opens no case")
    assert row.triaged_at == at(2)  # when it was triaged, as any mail (not when written)


@pytest.mark.parametrize(
    "raw_from",
    [
        b"=?utf-8?q?Evil=0D=0ABcc=3A_x=40y.z?= <ann@example.org>",
        b"=?utf-8?q?a=0D=0A=3Cevil=40x.y=3E?= <ann@example.org>",
    ],
)
def test_an_undecodable_display_name_never_costs_the_address(raw_from: bytes) -> None:
    raw = (
        b"From: " + raw_from + b"\r\nTo: support@example.com\r\nSubject: hi\r\n"
        b"Message-ID: <a@b>\r\n\r\nbody\r\n"
    )
    for parsed in (
        parse.parse_message(raw),
        # the stdlib's modern parser drops such an address: the fallback path salvages it
        parse._from_message(
            raw, email.message_from_bytes(raw, policy=email.policy.default), "", None, {}
        ),
    ):
        assert parsed.sender is not None and parsed.sender.address == "ann@example.org"
        assert "\r" not in parsed.sender.name and "\n" not in parsed.sender.name


def test_a_bounce_with_the_tag_reaches_its_case_by_the_reference(desk: StoreDesk) -> None:
    desk.deliver(mail(ANN, "Invoice", date=at(0)), at(0))
    desk.triage(at(0))
    with desk.engine.connect() as conn:
        ack_id = conn.execute(select(outbox.c.message_id)).scalar_one()
    bounce = mail(
        ("Mail Delivery System", "mailer-daemon@mx.example.org"),
        "Undelivered Mail Returned to Sender: Re: Invoice [KW-1]",
        "The mail could not be delivered.",
        date=at(1),
        headers={"Auto-Submitted": "auto-replied", "In-Reply-To": f"<{ack_id}>"},
    )
    desk.deliver(bounce, at(1))
    desk.triage(at(1))
    [row] = _rows(desk, bounce["Message-ID"])
    assert row.kind == "automated" and row.case_id is not None
    assert [k for k, _ in _events(desk, "KW-1") if k == "refused"] == []
    # the same robot naming the tag without referencing the case gets nowhere
    stray = mail(
        ("Mail Delivery System", "mailer-daemon@mx.example.org"),
        "Undelivered Mail Returned to Sender: Re: Invoice [KW-1]",
        "The mail could not be delivered.",
        date=at(2),
        headers={"Auto-Submitted": "auto-replied"},
    )
    desk.deliver(stray, at(2))
    desk.triage(at(2))
    [row] = _rows(desk, stray["Message-ID"])
    assert row.case_id is None
