"""Promise rows <-> domain Promise values (the minimum triage needs)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, and_, insert, select, update

from keepword.domain.model import PromiseAudience, PromiseKind, PromiseState
from keepword.domain.promises import Promise
from keepword.store.tables import promise


def to_promise(row: Row[Any]) -> Promise:
    return Promise(
        id=row.id,
        case_id=row.case_id,
        kind=PromiseKind(row.kind),
        audience=PromiseAudience(row.audience),
        made_at=row.made_at,
        due_at=row.due_at,
        state=PromiseState(row.state),
        resolved_at=row.resolved_at,
        reason=row.reason or "",
        basis=dict(row.basis or {}),
        is_default=row.is_default,
        superseded_by=row.superseded_by,
    )


def open_promises(conn: Connection, case_id: int) -> list[Promise]:
    query = (
        select(promise)
        .where(and_(promise.c.case_id == case_id, promise.c.state == PromiseState.OPEN.value))
        .order_by(promise.c.due_at)
    )
    return [to_promise(row) for row in conn.execute(query)]


def insert_promise(conn: Connection, value: Promise) -> int:
    key = conn.execute(
        insert(promise).values(
            case_id=value.case_id,
            kind=value.kind.value,
            audience=value.audience.value,
            made_at=value.made_at,
            due_at=value.due_at,
            state=value.state.value,
            resolved_at=value.resolved_at,
            reason=value.reason,
            basis=dict(value.basis),
            is_default=value.is_default,
            superseded_by=value.superseded_by,
        )
    ).inserted_primary_key
    assert key is not None
    return int(key[0])


def update_state(conn: Connection, value: Promise) -> None:
    assert value.id is not None
    conn.execute(
        update(promise)
        .where(promise.c.id == value.id)
        .values(
            state=value.state.value,
            resolved_at=value.resolved_at,
            reason=value.reason,
            superseded_by=value.superseded_by,
        )
    )
