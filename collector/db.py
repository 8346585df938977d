"""Storage: SQLAlchemy 2 typed models and the engine, for SQLite and PostgreSQL alike.

Tables (created by the Alembic migrations in ``migrations/``, never by ``create_all``):

- ``agents``: one row per agent name (made when its token is created or it first reports):
  when it was last seen, and the version, host name and cloud identity of its newest finding.
- ``tokens``: bearer tokens (``fleet``: one token shared by many hosts, each stored as its own
  agent ``HOSTNAME@NAME``), stored as the SHA-256 of the token (tokens are 32 random bytes,
  so a fast hash is enough) with a short non-secret prefix to list and revoke them by.
- ``findings``: every finding received, keyed by its own id (so a redelivery stores nothing
  twice), with the columns the API filters on and the whole finding as JSON.
- ``latest_states``: per agent × target × port, the newest finding and ``since``: when the
  target entered its present state (cause, location and the addresses' verdicts).

Times are stored in UTC and always come back timezone-aware (:class:`UTCDateTime`).
SQLite runs in WAL mode with foreign keys and a busy timeout, and write transactions start
with ``BEGIN IMMEDIATE`` (see :func:`write_session`) so concurrent writers queue instead of
failing on a lock upgrade.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    Uuid,
    create_engine,
    event,
    false,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

ROLES = ("agent", "viewer")
SQLITE_BUSY_MS = 30_000

# JSON everywhere, JSONB on PostgreSQL (smaller, indexable).
Document = JSON().with_variant(postgresql.JSONB(), "postgresql")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """Aware UTC; a naive time is taken to be UTC already."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class UTCDateTime(TypeDecorator):
    """A timestamp stored in UTC (naive on SQLite, timestamptz on PostgreSQL), read back aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return None if value is None else as_utc(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class AgentRow(Base):
    __tablename__ = "agents"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # its last batch, received
    version: Mapped[str | None] = mapped_column(Text)
    hostname: Mapped[str | None] = mapped_column(Text)
    cloud: Mapped[dict | None] = mapped_column(Document)
    finding_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # version etc. are from then


class TokenRow(Base):
    __tablename__ = "tokens"
    __table_args__ = (CheckConstraint("role IN ('agent', 'viewer')", name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    agent: Mapped[str] = mapped_column(String(128), index=True)  # the agent's (or viewer's) name
    role: Mapped[str] = mapped_column(String(16))
    # a fleet token's findings are stored under "HOSTNAME@AGENT", one agent per sending host
    fleet: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class FindingRow(Base):
    __tablename__ = "findings"
    __table_args__ = (
        Index("ix_findings_received_at_id", "received_at", "id"),  # keyset pagination
        Index("ix_findings_key", "agent", "target", "port", "created_at"),
        Index("ix_findings_created_at", "created_at"),  # retention, since/until
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    agent: Mapped[str] = mapped_column(String(128))  # the token's agent, not the payload's
    target: Mapped[str] = mapped_column(Text)
    port: Mapped[int] = mapped_column(Integer)
    cause: Mapped[str] = mapped_column(String(32), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    doc: Mapped[dict] = mapped_column(Document)  # the whole finding (mailpath.finding/v1)


class LatestRow(Base):
    __tablename__ = "latest_states"

    agent: Mapped[str] = mapped_column(String(128), primary_key=True)
    target: Mapped[str] = mapped_column(Text, primary_key=True)
    port: Mapped[int] = mapped_column(Integer, primary_key=True)
    finding_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("findings.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)  # of that (the newest) finding
    cause: Mapped[str] = mapped_column(String(32), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    headline: Mapped[str] = mapped_column(Text)
    location: Mapped[dict | None] = mapped_column(Document)
    signature: Mapped[str] = mapped_column(String(64))  # of cause, location and verdicts
    since: Mapped[dt.datetime] = mapped_column(UTCDateTime)  # when it entered this state


class JSONText(str):
    """A JSON document already serialized (by pydantic, several times faster than the standard
    library): stored as it is in a JSON column, where any other value is serialized first."""


def json_dumps(value: Any) -> str:
    return value if isinstance(value, JSONText) else json.dumps(value)


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (already normalised by the settings)."""
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_MS / 1000},
            json_serializer=json_dumps,
        )
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_timeout=10, json_serializer=json_dumps
    )


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling is turned off: BEGIN is ours (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in (
        "PRAGMA journal_mode=WAL",
        "PRAGMA foreign_keys=ON",
        f"PRAGMA busy_timeout={SQLITE_BUSY_MS}",
        "PRAGMA synchronous=NORMAL",
    ):
        cursor.execute(pragma)
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    write = connection.get_execution_options().get("mailpath_write", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


@contextlib.contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session in one write transaction, committed at the end (rolled back on error).
    On SQLite it takes the write lock at once (``BEGIN IMMEDIATE``)."""
    with engine.connect() as conn:
        conn.execution_options(mailpath_write=True)
        with conn.begin(), Session(bind=conn, expire_on_commit=False) as session:
            yield session
            session.flush()


@contextlib.contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A session for reading (one transaction, one consistent snapshot on SQLite)."""
    with Session(bind=engine, expire_on_commit=False) as session, session.begin():
        yield session
