"""The database schema: the Alembic migrations build exactly what the models describe, and
applying them again changes nothing."""

from __future__ import annotations

import os

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from mailpath.collector import migrate
from mailpath.collector.db import Base, make_engine
from mailpath.collector.settings import normalize_database_url


def test_the_migrations_build_the_models_schema(tmp_path):
    urls = [f"sqlite:///{tmp_path}/schema.db"]
    if os.environ.get("MAILPATH_TEST_DATABASE_URL"):
        urls.append(normalize_database_url(os.environ["MAILPATH_TEST_DATABASE_URL"]))
    heads, known = migrate.known_revisions()
    assert len(heads) == 1 and heads[0] in known
    for url in urls:
        engine = make_engine(url)
        try:
            assert migrate.upgrade(engine) == heads[0]
            assert migrate.upgrade(engine) == heads[0]  # again: nothing to do
            assert migrate.current_revisions(engine) == heads
            with engine.connect() as conn:
                context = MigrationContext.configure(conn, opts={"compare_type": True})
                assert compare_metadata(context, Base.metadata) == [], url
        finally:
            engine.dispose()
