"""Threading benchmark (not a test): classification + key extraction + choose_case.

    .venv/bin/python bench/thread_cases.py [--messages 20000] [--seed 7] [--repeat 3]

Generates a realistic shared inbox of --messages stored messages in threads, in time
order over about three months: customers write (order numbers, invoices, and a share
of generic subjects like "Invoice" or "Question" that several customers use), keepword
acknowledges (loop header, tag, body marker, In-Reply-To), staff answer from their
own client (Sent folder) with References and the tag, customers reply -- mostly with
References, some through clients that drop them (tag only), some with neither (subject
only) or only the quoted body marker -- plus out-of-office replies, bounces, mailing-list
mail, team members forwarding a customer's mail into the shared inbox, and strangers
quoting someone else's case tag.

Each message then goes through what the shell does per message: classify, extract the
keys (find_case_reference, referenced_ids, subject_key, external_correspondent), look
the candidates up in an in-memory index (dicts standing in for the database's indexed
lookups), choose_case, and record the result in the index. The first half (10k) and the
whole (20k) are measured in the same run, each from an empty index, best of --repeat,
in CPU seconds of this process (the machine is shared);
time(20k)/time(10k) should stay near 2 (linear). The generator knows the true thread of
every message, so the run also reports how many messages landed in the wrong case.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from keepword.domain.classify import classify  # noqa: E402
from keepword.domain.model import LOOP_HEADER, Address, Kind, MessageFacts, Origin  # noqa: E402
from keepword.domain.threads import (  # noqa: E402
    Candidates,
    CaseCandidate,
    ThreadRule,
    choose_case,
    external_correspondent,
    find_case_reference,
    referenced_ids,
    subject_key,
)

SHARED = "support@shop.example"
STAFF = ("alice@shop.example", "bob@shop.example", "carol@shop.example")
TEAM = frozenset({SHARED, *STAFF})
OWN = frozenset({SHARED})
PREFIXES = ("KW",)
WINDOW = timedelta(days=14)
START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
GENERIC = ("Invoice", "Question", "Order status", "Password reset", "Hello", "")
TOPICS = (
    "Order {n} not delivered",
    "Invoice {n} is wrong",
    "Refund for order {n}",
    "Cannot log in to account {n}",
    "Change of address for customer {n}",
    "Damaged item in parcel {n}",
)
BODY = "Hello,\n\n" + "Some words about the matter at hand. " * 12 + "\n\nRegards\n"


@dataclass
class Generated:
    facts: MessageFacts
    thread: int | None  # the true conversation; None: belongs to none (robots)


@dataclass
class Generator:
    rng: random.Random
    messages: list[Generated] = field(default_factory=list)
    threads: int = 0
    serial: int = 0

    def mid(self, host: str) -> str:
        self.serial += 1
        return f"{self.serial}.{self.rng.getrandbits(40):x}@{host}"

    def add(
        self, thread: int | None, at: datetime, sender: Address, subject: str, **kw: object
    ) -> MessageFacts:
        facts = MessageFacts(
            pk=0,
            mailbox="support",
            message_id=str(kw.pop("message_id", None) or self.mid(sender.address.split("@")[1])),
            sender=sender,
            subject=subject,
            date=at,
            body_text=str(kw.pop("body", BODY)),
            **kw,  # type: ignore[arg-type]
        )
        self.messages.append(Generated(facts, thread))
        return facts

    def thread(self, customer: Address, at: datetime, subject: str) -> None:
        self.threads += 1
        thread = self.threads
        reference = f"KW-{thread}"  # the shell numbers cases in opening order
        rng = self.rng
        first = self.add(thread, at, customer, subject, to=(Address(SHARED),))
        chain = [first.message_id]
        ack = self.add(
            thread,
            at + timedelta(seconds=30),
            Address(SHARED),
            f"Re: {subject} [{reference}]",
            to=(customer,),
            in_reply_to=(first.message_id,),
            references=tuple(chain),
            headers={LOOP_HEADER.lower(): (SHARED,), "auto-submitted": ("auto-replied",)},
            origin=Origin.SENT,
            body=f"We got your mail.\n\nCase reference: {reference}\n",
        )
        chain.append(ack.message_id)
        now = at
        for _ in range(rng.choice((0, 1, 1, 2, 2, 3, 4))):
            now += timedelta(hours=rng.uniform(1, 40))
            staff = Address(rng.choice(STAFF))
            # a third answer with plain "Reply" in their client: no tag, References only
            tag = "" if rng.random() < 0.3 else f" [{reference}]"
            reply = self.add(
                thread,
                now,
                staff,
                f"Re: {subject}{tag}",
                to=(customer,),
                cc=(Address(SHARED),),
                in_reply_to=(chain[-1],),
                references=tuple(chain[-10:]),
                origin=Origin.SENT,
                body=BODY + f"\n> Case reference: {reference}\n",
            )
            chain.append(reply.message_id)
            if rng.random() < 0.05:  # the customer is away
                self.add(
                    thread,
                    now + timedelta(minutes=1),
                    customer,
                    f"Automatic reply: Re: {subject}{tag}",
                    to=(staff,),
                    in_reply_to=(reply.message_id,),
                    headers={"auto-submitted": ("auto-replied",)},
                )
            now += timedelta(hours=rng.uniform(2, 72))
            chain.append(self.customer_reply(thread, now, customer, subject, reference, chain))

    def customer_reply(
        self,
        thread: int,
        at: datetime,
        customer: Address,
        subject: str,
        reference: str,
        chain: list[str],
    ) -> str:
        mode = self.rng.random()
        quoted = BODY + f"\n> Case reference: {reference}\n"
        if mode < 0.68:  # a normal client: References, and mostly the tag
            tag = "" if self.rng.random() < 0.3 else f" [{reference}]"
            facts = self.add(
                thread,
                at,
                customer,
                f"Re: {subject}{tag}",
                in_reply_to=(chain[-1],),
                references=tuple(chain[-10:]),
                body=quoted,
            )
        elif mode < 0.83:  # the client dropped References; the tag survives
            facts = self.add(thread, at, customer, f"RE: {subject} [{reference}]", body=quoted)
        elif mode < 0.93:  # neither: a new mail with the same subject
            facts = self.add(thread, at, customer, f"AW: {subject}")
        else:  # the subject was rewritten; the quoted body marker remains
            facts = self.add(thread, at, customer, "Re: one more thing", body=quoted)
        return facts.message_id

    def noise(self, at: datetime) -> None:
        pick = self.rng.random()
        if pick < 0.4:  # a bounce of some old acknowledgement, without usable references
            self.add(
                None,
                at,
                Address("mailer-daemon@mx.example.net"),
                "Undelivered Mail Returned to Sender",
                content_type='multipart/report; report-type="delivery-status"',
                headers={"return-path": ("<>",)},
            )
        elif pick < 0.8:
            self.add(
                None,
                at,
                Address("news@vendor.example"),
                "Weekly digest",
                headers={"list-id": ("<news.vendor.example>",), "precedence": ("bulk",)},
            )
        else:  # a stranger quoting somebody's case number
            stranger = Address(f"stranger{self.rng.randrange(10**6)}@spam.example")
            victim = self.rng.randint(1, max(1, self.threads))
            self.threads += 1
            self.add(self.threads, at, stranger, f"Re: [KW-{victim}] your parcel")


def generate(total: int, seed: int) -> list[Generated]:
    rng = random.Random(seed)
    gen = Generator(rng)
    customers = [
        Address(f"customer{i}@mail{i % 97}.example", f"Customer {i}") for i in range(total // 6)
    ]
    days = max(1, total // 220)  # about 220 stored messages a day
    while len(gen.messages) < total:
        at = START + timedelta(seconds=rng.uniform(0, days * 86400))
        pick = rng.random()
        if pick < 0.05:
            gen.noise(at)
            continue
        customer = rng.choice(customers)
        if pick < 0.14:
            subject = rng.choice(GENERIC)
        else:
            subject = rng.choice(TOPICS).format(n=rng.randrange(10**5, 10**6))
        if pick > 0.97:  # a team member forwards the customer's mail into the inbox
            gen.threads += 1
            body = (
                "Can someone take this?\n\n---------- Forwarded message ---------\n"
                f"From: {customer.name} <{customer.address}>\nSubject: {subject}\n\n{BODY}"
            )
            gen.add(
                gen.threads,
                at,
                Address(rng.choice(STAFF)),
                f"Fwd: {subject}",
                to=(Address(SHARED),),
                body=body,
            )
            continue
        gen.thread(customer, at, subject)
    ordered = sorted(gen.messages, key=lambda g: g.facts.date or START)[:total]
    return ordered


@dataclass
class CaseRow:
    case_id: int
    reference: str
    correspondents: set[str]
    subject_key: str
    last_activity: datetime
    thread: int | None

    def candidate(self) -> CaseCandidate:
        return CaseCandidate(
            self.case_id,
            self.reference,
            frozenset(self.correspondents),
            self.subject_key,
            self.last_activity,
            False,
        )


@dataclass
class Index:
    """What the database's indexes give the shell: ids, references, (who, subject)."""

    cases: dict[int, CaseRow] = field(default_factory=dict)
    by_message_id: dict[str, int] = field(default_factory=dict)
    by_reference: dict[str, int] = field(default_factory=dict)
    by_subject: dict[tuple[str, str], list[int]] = field(default_factory=dict)


@dataclass
class Outcome:
    rules: Counter[str] = field(default_factory=Counter)
    wrong: Counter[str] = field(default_factory=Counter)
    quarters: list[float] = field(default_factory=list)  # CPU seconds per quarter


def run(messages: list[Generated]) -> tuple[float, Outcome]:
    index = Index()
    outcome = Outcome()
    gc.collect()
    # CPU time of this process: the machine is shared, wall time swings with its load.
    started = mark = time.process_time()
    quarter = max(1, len(messages) // 4)
    for number, item in enumerate(messages, 1):
        facts = item.facts
        kind = classify(facts, team=TEAM, own_addresses=OWN).kind
        correspondent = external_correspondent(facts, kind, TEAM)
        key = subject_key(facts.subject)
        tag = find_case_reference(facts, PREFIXES)
        tagged = index.by_reference.get(tag) if tag else None
        referenced = dict.fromkeys(
            case_id
            for mid in referenced_ids(facts)
            if (case_id := index.by_message_id.get(mid)) is not None
        )
        same_subject = (
            index.by_subject.get((correspondent.address, key), []) if correspondent and key else []
        )
        candidates = Candidates(
            by_tag=index.cases[tagged].candidate() if tagged is not None else None,
            by_reference=tuple(index.cases[c].candidate() for c in referenced),
            by_subject=tuple(index.cases[c].candidate() for c in same_subject),
        )
        assert facts.date is not None
        match = choose_case(
            facts,
            kind,
            candidates,
            now=facts.date,
            subject_window=WINDOW,
            team=TEAM,
        )
        case_id = match.case_id
        if case_id is None and kind is not Kind.AUTOMATED:
            case_id = len(index.cases) + 1
            # The generator wrote its tags as KW-<true thread>; name the case the same
            # way (a second case for one thread gets a name nobody quotes).
            reference = f"KW-{item.thread}"
            if item.thread is None or reference in index.by_reference:
                reference = f"KW-X{case_id}"
            row = CaseRow(case_id, reference, set(), key, facts.date, item.thread)
            index.cases[case_id] = row
            index.by_reference[row.reference] = case_id
            if correspondent is not None:
                row.correspondents.add(correspondent.address)
                index.by_subject.setdefault((correspondent.address, key), []).append(case_id)
        if case_id is not None:
            row = index.cases[case_id]
            row.last_activity = max(row.last_activity, facts.date)
            index.by_message_id[facts.message_id] = case_id
        outcome.rules[match.rule.value] += 1
        landed = index.cases[case_id].thread if case_id is not None else None
        if landed != item.thread:
            outcome.wrong[match.rule.value] += 1
        if number % quarter == 0:
            outcome.quarters.append(time.process_time() - mark)
            mark = time.process_time()
    return time.process_time() - started, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    messages = generate(args.messages, args.seed)
    half = messages[: len(messages) // 2]
    best: dict[int, float] = {}
    outcomes: dict[int, Outcome] = {}
    quarter_best: list[float] = []
    for _ in range(args.repeat):
        for batch in (half, messages):
            seconds, outcome = run(batch)
            best[len(batch)] = min(best.get(len(batch), seconds), seconds)
            outcomes[len(batch)] = outcome
        latest = outcomes[len(messages)].quarters
        quarter_best = [min(pair) for pair in zip(quarter_best or latest, latest, strict=True)]
    for size, seconds in best.items():
        print(f"{size:>6} messages: {seconds:6.3f} s CPU  {size / seconds:8.0f} msgs/s")
    small, large = sorted(best)
    ratio = best[large] / best[small]
    print(f"time({large})/time({small}) = {ratio:.2f} (linear: {large / small:.2f})")
    outcome = outcomes[large]
    quarters = ", ".join(f"{large / 4 / q:.0f}" for q in quarter_best)
    print(f"msgs/s per quarter of the {large} run (best of each): {quarters}")
    print("rules:", ", ".join(f"{rule} {count}" for rule, count in outcome.rules.most_common()))
    wrong = sum(outcome.wrong.values())
    detail = ", ".join(f"{rule} {count}" for rule, count in outcome.wrong.most_common())
    print(f"in the wrong case: {wrong} of {large} ({100 * wrong / large:.2f}%) [{detail}]")
    assert {r.value for r in ThreadRule} >= set(outcome.rules)


if __name__ == "__main__":
    main()
