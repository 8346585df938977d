"""What ``mailpath collector token …`` does, by database URL: open the database (migrated to
this collector's schema, or refused when newer), then one function of :mod:`.auth` in one
transaction. The CLI stays a thin shell over these."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mailpath.collector import auth, migrate
from mailpath.collector.db import make_engine, read_session, write_session
from mailpath.collector.errors import CannotStart, ConfigError
from mailpath.collector.settings import CollectorSettings, load_settings
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError


def settings_for(
    database: str | None = None, data_dir: str | None = None, **more: object
) -> CollectorSettings:
    return load_settings(database_url=database, data_dir=data_dir, **more)


@contextlib.contextmanager
def opened(settings: CollectorSettings) -> Iterator[Engine]:
    """The database of ``settings``, migrated; disposed of at the end."""
    if not settings.database_url and not settings.data_dir.is_dir():
        raise ConfigError(f"the data directory {str(settings.data_dir)!r} does not exist")
    engine = make_engine(settings.database)
    try:
        migrate.upgrade(engine)
        yield engine
    except DBAPIError as e:
        shown = engine.url.render_as_string(hide_password=True)
        raise CannotStart(f"cannot use the database {shown}: {' '.join(str(e.orig).split())}") from None
    finally:
        engine.dispose()


def create_token(
    settings: CollectorSettings, agent: str, role: str, *, fleet: bool = False
) -> tuple[str, auth.TokenInfo]:
    auth.check_name(agent)
    auth.check_role(role)
    if fleet and role != "agent":
        raise ConfigError("only an agent token can be a fleet token")
    with opened(settings) as engine, write_session(engine) as session:
        return auth.create_token(session, agent, role, fleet=fleet)


def list_tokens(settings: CollectorSettings) -> list[auth.TokenInfo]:
    with opened(settings) as engine, read_session(engine) as session:
        return auth.list_tokens(session)


def revoke_token(settings: CollectorSettings, prefix_or_id: str) -> tuple[auth.TokenInfo, bool]:
    with opened(settings) as engine, write_session(engine) as session:
        return auth.revoke_token(session, prefix_or_id)
