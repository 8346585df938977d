"""The database schema: Alembic migrations (``migrations/``), applied at start-up.

:func:`upgrade` brings the database to this collector's head revision. A database whose
revision this collector does not know (a newer collector migrated it) is refused with
:class:`CannotStart` and one line: a replica never runs against a schema newer than its own.
On PostgreSQL an advisory lock makes replicas that start together migrate one at a time.
"""

from __future__ import annotations

from pathlib import Path

from mailpath.collector.errors import CannotStart
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

MIGRATIONS = Path(__file__).resolve().with_name("migrations")
PG_LOCK = 0x6D61696C70617468  # "mailpath": the advisory lock replicas migrate under


def _config(connection=None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def known_revisions() -> tuple[list[str], set[str]]:
    """(this collector's head revisions, every revision it knows)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config())
    return list(script.get_heads()), {s.revision for s in script.walk_revisions()}


def current_revisions(engine: Engine) -> list[str]:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return list(MigrationContext.configure(conn).get_current_heads())


def upgrade(engine: Engine, *, shown_url: str | None = None) -> str:
    """Migrate to head (nothing to do when already there); returns the head revision."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    heads, known = known_revisions()
    where = shown_url or engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            conn.execution_options(mailpath_write=True)
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK})
            current = set(MigrationContext.configure(conn).get_current_heads())
            unknown = sorted(current - known)
            if unknown:
                raise CannotStart(
                    f"the database {where} is at schema revision {', '.join(unknown)}, newer than "
                    f"this collector knows (its newest is {', '.join(heads)}): run a newer collector"
                )
            if current != set(heads):
                command.upgrade(_config(conn), "head")
            conn.commit()
    except DBAPIError as e:
        raise CannotStart(f"cannot use the database {where}: {_reason(e)}") from None
    except SQLAlchemyError as e:
        raise CannotStart(f"cannot use the database {where}: {type(e).__name__}: {e}") from None
    return heads[0]


def _reason(error: DBAPIError) -> str:
    """The driver's message, on one line."""
    return " ".join(str(error.orig).split()) or type(error.orig).__name__
