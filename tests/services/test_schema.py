"""The database schema: the Alembic migrations build exactly what the models describe, and
applying them again changes nothing."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from mailpath.collector import migrate
from mailpath.collector.db import Base, make_engine
from mailpath.collector.settings import normalize_database_url


def test_the_migrations_build_the_models_schema(tmp_path, postgres_url):
    urls = [f"sqlite:///{tmp_path}/schema.db", normalize_database_url(postgres_url)]
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
