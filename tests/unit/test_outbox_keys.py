"""The outbox key grammar: one module builds every key; a case's chase keys read as ranges."""

from __future__ import annotations

from datetime import UTC, date, datetime

from keepword.domain import outbox_keys as keys


def test_every_kind_of_key_is_spelled_once() -> None:
    assert keys.ack_key(42) == "ack:42"
    assert keys.note_key(42, datetime(2026, 11, 2, 23, 59, tzinfo=UTC)) == "note:42:2026-11-02"
    assert keys.lead_alert_key("support", 42) == "lead_alert:support:after:42"
    assert keys.reminder_key(42, 7, 0.5) == "reminder:case:42:promise:7:50"
    assert keys.escalation_key(42, 7) == "escalation:case:42:promise:7"
    assert keys.escalation_key(42, None) == "escalation:case:42:unpromised"
    assert keys.update_key(42, 7) == "update:case:42:promise:7"
    assert keys.breach_key(42, 7) == "breach:case:42:promise:7"
    assert keys.digest_key("support", date(2026, 11, 2)) == "digest:support:2026-11-02"
    away = keys.away_key("support", "Alice@Example.com", date(2026, 11, 2))
    assert away == "away:support:alice@example.com:2026-11-02"


# Case 42's chase keys, and keys near them that are not (tests/unit/test_store_promises.py
# reads the same through the store).
CASE_42_CHASE_KEYS = [
    keys.reminder_key(42, 7, 0.75),
    keys.escalation_key(42, None),
    keys.update_key(42, 7),
    keys.breach_key(42, 7),
]
NOT_CASE_42_CHASE_KEYS = [
    keys.reminder_key(421, 7, 0.5),
    keys.update_key(4, 7),
    keys.escalation_key(420, 9),
    keys.ack_key(42),
    keys.note_key(42, datetime(2026, 11, 2, tzinfo=UTC)),
    keys.lead_alert_key("support", 42),
    keys.away_key("support", "a@example.com", date(2026, 11, 2)),
]


def test_chase_ranges_hold_this_cases_chase_keys_and_nothing_else() -> None:
    def inside(key: str) -> bool:
        return any(low <= key < high for low, high in keys.chase_key_ranges(42))

    assert all(inside(k) for k in CASE_42_CHASE_KEYS)
    assert not any(inside(k) for k in NOT_CASE_42_CHASE_KEYS)


def test_promise_id_of_reads_chase_keys_only() -> None:
    assert keys.promise_id_of(keys.reminder_key(42, 7, 0.5)) == 7
    assert keys.promise_id_of(keys.escalation_key(42, None)) is None
    assert keys.promise_id_of("ack:case:42:promise:x") is None
