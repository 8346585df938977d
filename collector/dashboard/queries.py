"""What the dashboard reads: SQLAlchemy statements with bound parameters only, each bounded.

The pages turn these rows into :mod:`.views` values; nothing here formats anything.
"""

from __future__ import annotations

import datetime as dt
import uuid

from mailpath.collector.dashboard.views import Point, State, state_key
from mailpath.collector.db import AgentRow, FindingRow, LatestRow
from sqlalchemy import func, select
from sqlalchemy.orm import Session

MAX_STATES = 10_000  # cells of the matrix: a larger fleet is shown in part, and says so
MAX_AGENTS = 5_000
MAX_HISTORY = 2_000  # findings of one target read for its history, the newest


def _state(row: LatestRow) -> State:
    return State(
        agent=row.agent,
        target=row.target,
        port=row.port,
        cause=row.cause,
        severity=row.severity,
        headline=row.headline,
        since=row.since,
        last_finding_at=row.created_at,
        finding_id=str(row.finding_id),
    )


def fleet(session: Session, limit: int = MAX_STATES) -> tuple[list[State], int]:
    """The latest states, the most recently changed first, at most ``limit``; and how many
    there are in all."""
    total = session.scalar(select(func.count()).select_from(LatestRow)) or 0
    rows = session.scalars(
        select(LatestRow)
        .order_by(LatestRow.since.desc(), LatestRow.agent, LatestRow.target, LatestRow.port)
        .limit(limit)
    )
    return [_state(r) for r in rows], total


def agents_seen(session: Session, limit: int = MAX_AGENTS) -> dict[str, dt.datetime | None]:
    """Agents known to the collector (reported, or holding an agent token), by name: when
    each last sent a batch (None: never)."""
    rows = session.execute(select(AgentRow.name, AgentRow.last_seen).order_by(AgentRow.name).limit(limit))
    return {name: seen for name, seen in rows}


def agent(session: Session, name: str) -> AgentRow | None:
    return session.get(AgentRow, name)


def target_state(session: Session, agent: str, target: str, port: int) -> State | None:
    row = session.get(LatestRow, (agent, target, port))
    return _state(row) if row else None


def history(
    session: Session, agent: str, target: str, port: int, limit: int = MAX_HISTORY
) -> tuple[list[Point], bool]:
    """The newest ``limit`` findings of one agent × target × port as history points (oldest
    first), and whether older ones were left out."""
    rows = session.execute(
        select(FindingRow.id, FindingRow.created_at, FindingRow.cause, FindingRow.severity, FindingRow.doc)
        .where(FindingRow.agent == agent, FindingRow.target == target, FindingRow.port == port)
        .order_by(FindingRow.created_at.desc(), FindingRow.id.desc())
        .limit(limit + 1)
    ).all()
    more = len(rows) > limit
    points = [
        Point(
            id=str(ident),
            created_at=created,
            cause=cause,
            severity=severity,
            headline=str(doc.get("headline", "")),
            key=state_key(doc),
        )
        for ident, created, cause, severity, doc in rows[:limit]
    ]
    return points[::-1], more


def finding(session: Session, finding_id: uuid.UUID) -> FindingRow | None:
    return session.get(FindingRow, finding_id)
