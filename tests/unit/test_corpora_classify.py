"""Every real-world mail in the shared corpora is classified, and robots are robots.

tests/data/corpora_expected.csv holds the expected kind per rfc822 file. It was derived
from the corpora's own index.csv (any bounce-dsn, auto-reply, out-of-office or
mailing-list tag -> automated, anything else -> customer), not from the classifier;
every file where the classifier disagreed was read and, where the index heuristics were
wrong, the expectation corrected with a "reviewed:" note saying why.
"""

from __future__ import annotations

import csv
import gzip
import mailbox
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from keepword.domain.classify import classify
from keepword.domain.model import Classification, Kind, MessageFacts, Origin
from keepword.domain.threads import (
    external_correspondent,
    find_case_reference,
    forwarded_original_sender,
    referenced_ids,
    subject_key,
)
from tests.corpora import CORPORA, PRESENT
from tests.fixtures.facts import parsed_facts

EXPECTED = Path(__file__).parent.parent / "data" / "corpora_expected.csv"
TEAM = frozenset({"support@shop.example", "bob@shop.example"})
ROBOT_TAGS = frozenset({"bounce-dsn", "auto-reply", "out-of-office", "mailing-list"})

pytestmark = pytest.mark.skipif(not PRESENT, reason="shared corpora not present")


@dataclass(frozen=True)
class Seen:
    file: str
    tags: frozenset[str]
    facts: MessageFacts
    result: Classification


def _index() -> list[dict[str, str]]:
    with (CORPORA / "index.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _facts(raw: bytes, origin: Origin = Origin.INBOX) -> MessageFacts:
    return parsed_facts(raw, origin)


def _classify(facts: MessageFacts) -> Classification:
    return classify(facts, team=TEAM, own_addresses=frozenset({"support@shop.example"}))


@pytest.fixture(scope="module")
def seen() -> dict[str, Seen]:
    result: dict[str, Seen] = {}
    for row in _index():
        if row["kind"] != "rfc822":
            continue
        facts = _facts((CORPORA / row["file"]).read_bytes())
        tags = frozenset(row["tags"].split(";"))
        result[row["file"]] = Seen(row["file"], tags, facts, _classify(facts))
    return result


@pytest.fixture(scope="module")
def expected() -> dict[str, tuple[Kind, str]]:
    with EXPECTED.open(newline="") as handle:
        return {
            row["file"]: (Kind(row["expected_kind"]), row["note"]) for row in csv.DictReader(handle)
        }


def test_every_rfc822_file_is_classified(seen: dict[str, Seen]) -> None:
    assert len(seen) > 1000
    for item in seen.values():
        assert item.result.kind in set(Kind)
        assert item.result.reason


def test_expectations_cover_every_file(
    seen: dict[str, Seen], expected: dict[str, tuple[Kind, str]]
) -> None:
    assert set(expected) == set(seen)


def test_expectations_keep_every_robot_of_the_index(
    seen: dict[str, Seen], expected: dict[str, tuple[Kind, str]]
) -> None:
    # Guards the CSV itself: an index robot may never be "expected" to be a person.
    robots = [name for name, item in seen.items() if item.tags & ROBOT_TAGS]
    assert len(robots) > 450
    assert [name for name in robots if expected[name][0] is not Kind.AUTOMATED] == []


def test_every_file_has_its_expected_kind(
    seen: dict[str, Seen], expected: dict[str, tuple[Kind, str]]
) -> None:
    wrong = [
        f"{name}: expected {kind}, got {seen[name].result.kind} ({seen[name].result.reason})"
        for name, (kind, _) in sorted(expected.items())
        if seen[name].result.kind is not kind
    ]
    assert wrong == []


def test_plain_human_mail_is_not_silenced(
    seen: dict[str, Seen], expected: dict[str, tuple[Kind, str]]
) -> None:
    humans = [
        item
        for item in seen.values()
        if item.tags & {"plain", "reply-with-quote", "forwarded"} and not item.tags & ROBOT_TAGS
    ]
    assert len(humans) > 100
    silenced = [item.file for item in humans if item.result.kind is Kind.AUTOMATED]
    # only the reviewed exceptions (bounces and no-reply senders the index missed)
    assert [name for name in silenced if not expected[name][1].startswith("reviewed:")] == []
    assert len(silenced) < len(humans) // 10


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("sisimai-set-of-emails/not/is-not-bounce-01.eml", Kind.CUSTOMER),
        ("sisimai-set-of-emails/not/is-not-bounce-02.eml", Kind.CUSTOMER),
        ("rjbs-bounceparser/non-autoreply.msg", Kind.AUTOMATED),
        ("rjbs-bounceparser/warning-6.msg", Kind.AUTOMATED),  # Lotus "AUTO:" only
        ("sisimai-set-of-emails/bsd/rfc3834-03.eml", Kind.AUTOMATED),  # Apple "Auto reply:"
        ("discourse/forwarded_email_1.eml", Kind.CUSTOMER),
        ("discourse/missing_message_id.eml", Kind.CUSTOMER),
    ],
)
def test_known_cases(seen: dict[str, Seen], name: str, kind: Kind) -> None:
    assert seen[name].result.kind is kind


def test_team_members_robots_stay_robots(seen: dict[str, Seen]) -> None:
    # The same files as if a team member's mailbox had sent them: robots first.
    for item in seen.values():
        if item.result.kind is not Kind.AUTOMATED:
            continue
        sent = _facts((CORPORA / item.file).read_bytes(), Origin.SENT)
        assert _classify(sent).kind is Kind.AUTOMATED, item.file


def test_threading_keys_never_crash(seen: dict[str, Seen]) -> None:
    for item in seen.values():
        facts = item.facts
        key = subject_key(facts.subject)
        assert subject_key(key) == key
        assert facts.message_id not in referenced_ids(facts)
        external_correspondent(facts, item.result.kind, TEAM)
        find_case_reference(facts, ["KW"])
        forwarded_original_sender(facts.body_text)


@pytest.mark.parametrize(
    ("name", "original"),
    [
        ("discourse/forwarded_email_1.eml", "some@one.com"),  # "From:" block, no marker
        ("zammad/mail036.box", "m.smith@example.com"),  # GMX: "Gesendet:" then "Von:"
        ("zammad/mail082.box", "from@example.com"),  # Outlook "[mailto:...]"
        ("mailgun-flanker/multi-received-headers.eml", "hello@example.com"),
    ],
)
def test_forwarded_senders_in_real_forwards(
    seen: dict[str, Seen], name: str, original: str
) -> None:
    found = forwarded_original_sender(seen[name].facts.body_text)
    assert found is not None
    assert found.address == original


def _mbox_messages(path: Path, tmp_path: Path) -> Iterator[bytes]:
    if path.suffix == ".gz":
        unpacked = tmp_path / path.stem
        with gzip.open(path) as packed:
            unpacked.write_bytes(packed.read())
        path = unpacked
    box = mailbox.mbox(path)
    try:
        for key in box.iterkeys():
            yield box.get_bytes(key)
    finally:
        box.close()


def test_mbox_messages(tmp_path: Path) -> None:
    fedora = [
        _classify(_facts(raw))
        for raw in _mbox_messages(
            CORPORA / "jwzthreading-fedora-devel/2010-January.txt.gz", tmp_path
        )
    ]
    assert len(fedora) == 292
    assert {result.kind for result in fedora} == {Kind.AUTOMATED}  # a list archive
    bounces = [
        (_facts(raw), _classify(_facts(raw)))
        for raw in _mbox_messages(CORPORA / "sisimai-set-of-emails/mailbox/mbox-0", tmp_path)
    ]
    assert len(bounces) == 37
    people = [facts.subject for facts, result in bounces if result.kind is not Kind.AUTOMATED]
    # one person forwards a bounce to the shared inbox: that is a person writing
    assert people == ["Fwd: Returned mail: see transcript for details"]
