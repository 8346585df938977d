"""Alembic environment: run by :func:`mailpath.collector.migrate.upgrade` with an open
connection in ``config.attributes["connection"]`` (the collector never reads alembic.ini)."""

from __future__ import annotations

from alembic import context
from mailpath.collector.db import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - offline or stand-alone use is not supported
    raise RuntimeError("the collector's migrations run through mailpath.collector.migrate")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
