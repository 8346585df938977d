"""Reading: the list endpoints' queries with keyset pagination, and retention.

Cursors are opaque to clients (URL-safe base64 of JSON) and hold the sort key of the last item
of the page: ``(received_at, id)`` for findings, newest first; ``(agent, target, port)`` for
targets; the name for agents. A page starts strictly after its cursor, so findings stored
while a client pages are never seen twice and never make it skip one (they sort before the
first page).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from dataclasses import dataclass

from mailpath.collector.db import AgentRow, FindingRow, LatestRow, as_utc, utcnow
from sqlalchemy import ColumnElement, delete, func, select, tuple_
from sqlalchemy.orm import Session


class BadCursor(ValueError):
    """A cursor this collector did not hand out (or of another list)."""


def encode_cursor(kind: str, *key: object) -> str:
    raw = json.dumps([kind, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str, arity: int) -> list:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        raise BadCursor("invalid cursor") from None
    if not isinstance(value, list) or len(value) != arity + 1 or value[0] != kind:
        raise BadCursor("invalid cursor (not one of this list's)")
    for part in value[1:]:
        ok = (isinstance(part, str) and "\x00" not in part) or (
            isinstance(part, int) and not isinstance(part, bool) and 0 <= part <= 65535
        )
        if not ok:
            raise BadCursor("invalid cursor")
    return value[1:]


@dataclass
class FindingFilter:
    agent: str | None = None
    target: str | None = None
    port: int | None = None
    cause: str | None = None
    severity: str | None = None
    since: dt.datetime | None = None  # created_at >= since
    until: dt.datetime | None = None  # created_at < until

    def clauses(self) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        for name in ("agent", "target", "port", "cause", "severity"):
            value = getattr(self, name)
            if value is not None:
                out.append(getattr(FindingRow, name) == value)
        if self.since is not None:
            out.append(FindingRow.created_at >= as_utc(self.since))
        if self.until is not None:
            out.append(FindingRow.created_at < as_utc(self.until))
        return out


def finding_item(row: FindingRow) -> dict:
    return {
        "id": row.id,
        "agent": row.agent,
        "target": row.target,
        "port": row.port,
        "cause": row.cause,
        "severity": row.severity,
        "created_at": row.created_at,
        "received_at": row.received_at,
        "finding": row.doc,
    }


def list_findings(session: Session, where: FindingFilter, limit: int, cursor: str | None) -> dict:
    query = select(FindingRow).where(*where.clauses())
    if cursor:
        received, ident = decode_cursor("f", cursor, 2)
        try:
            key = (as_utc(dt.datetime.fromisoformat(received)), uuid.UUID(ident))
        except (TypeError, ValueError, OverflowError):
            raise BadCursor("invalid cursor") from None
        query = query.where(tuple_(FindingRow.received_at, FindingRow.id) < tuple_(*key))
    query = query.order_by(FindingRow.received_at.desc(), FindingRow.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if rows and more else None
    return {
        "items": [finding_item(r) for r in rows],
        "next_cursor": encode_cursor("f", last.received_at.isoformat(), str(last.id)) if last else None,
    }


def get_finding(session: Session, finding_id: uuid.UUID) -> dict | None:
    row = session.get(FindingRow, finding_id)
    return finding_item(row) if row else None


def target_item(row: LatestRow) -> dict:
    return {
        "agent": row.agent,
        "target": row.target,
        "port": row.port,
        "cause": row.cause,
        "severity": row.severity,
        "headline": row.headline,
        "location": row.location,
        "since": row.since,
        "last_finding_at": row.created_at,
        "finding_id": row.finding_id,
    }


def list_targets(
    session: Session,
    limit: int,
    cursor: str | None,
    agent: str | None = None,
    target: str | None = None,
    port: int | None = None,
    cause: str | None = None,
    severity: str | None = None,
) -> dict:
    query = select(LatestRow)
    for name, value in (
        ("agent", agent),
        ("target", target),
        ("port", port),
        ("cause", cause),
        ("severity", severity),
    ):
        if value is not None:
            query = query.where(getattr(LatestRow, name) == value)
    if cursor:
        a, t, p = decode_cursor("t", cursor, 3)
        if not (isinstance(a, str) and isinstance(t, str) and isinstance(p, int)):
            raise BadCursor("invalid cursor")
        query = query.where(tuple_(LatestRow.agent, LatestRow.target, LatestRow.port) > tuple_(a, t, p))
    query = query.order_by(LatestRow.agent, LatestRow.target, LatestRow.port).limit(limit + 1)
    rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if rows and more else None
    return {
        "items": [target_item(r) for r in rows],
        "next_cursor": encode_cursor("t", last.agent, last.target, last.port) if last else None,
    }


def agent_item(row: AgentRow) -> dict:
    return {
        "name": row.name,
        "created_at": row.created_at,
        "last_seen": row.last_seen,
        "version": row.version,
        "hostname": row.hostname,
        "cloud": row.cloud,
    }


def list_agents(session: Session, limit: int, cursor: str | None) -> dict:
    query = select(AgentRow)
    if cursor:
        (name,) = decode_cursor("a", cursor, 1)
        if not isinstance(name, str):
            raise BadCursor("invalid cursor")
        query = query.where(AgentRow.name > name)
    rows = list(session.scalars(query.order_by(AgentRow.name).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [agent_item(r) for r in rows],
        "next_cursor": encode_cursor("a", rows[-1].name) if rows and more else None,
    }


def latest_by_cause(session: Session) -> dict[str, int]:
    """How many targets are in each cause now (the gauge /metrics computes at scrape)."""
    rows = session.execute(select(LatestRow.cause, func.count()).group_by(LatestRow.cause))
    return {cause: count for cause, count in rows}


def agents_last_seen(session: Session) -> dict[str, dt.datetime | None]:
    """Each agent's last batch (None before its first): for the stopped-reporting alert."""
    rows = session.execute(select(AgentRow.name, AgentRow.last_seen))
    return {name: at for name, at in rows}


def purge(session: Session, age: dt.timedelta, now: dt.datetime | None = None, batch: int = 5000) -> int:
    """Delete findings created more than ``age`` ago, except each target's latest (which the
    latest state points at); returns how many. In batches, so no transaction grows large."""
    cutoff = (now or utcnow()) - age
    latest = select(LatestRow.finding_id)
    doomed = (
        select(FindingRow.id)
        .where(FindingRow.created_at < cutoff, FindingRow.id.not_in(latest))
        .limit(batch)
        .scalar_subquery()
    )
    result = session.execute(delete(FindingRow).where(FindingRow.id.in_(doomed)))
    return result.rowcount or 0
