"""The collector's settings: pydantic-settings, from arguments or ``MAILPATH_COLLECTOR_*``
environment variables (arguments win).

=================================  ==========================================================
variable                           meaning (default)
=================================  ==========================================================
``MAILPATH_COLLECTOR_DATABASE_URL``  ``sqlite:///PATH`` or ``postgresql://…`` (``collector.db``
                                   in the data directory)
``MAILPATH_COLLECTOR_LISTEN``      ``HOST:PORT`` or ``[IPv6]:PORT`` (``127.0.0.1:8080``; port 0:
                                   any free port, the one taken is logged)
``MAILPATH_COLLECTOR_DATA_DIR``    where the default SQLite file lives (the working directory)
``MAILPATH_COLLECTOR_BODY_LIMIT``  bytes of a ``POST /v1/findings`` body, before and after gzip
                                   (10 MiB)
``MAILPATH_COLLECTOR_RETENTION_AGE``  findings older than this (by ``created_at``) are deleted,
                                   each target's latest kept; seconds, ``30d``, ``12h``, ``90m``
                                   or ISO 8601 (``P30D``); 0 keeps everything (30 days)
``MAILPATH_COLLECTOR_RETENTION_INTERVAL``  how often retention runs, the same way (1 hour)
``MAILPATH_COLLECTOR_ACCESS_LOG``  log one line per request (method, path, status; never a
                                   header) (true)
=================================  ==========================================================

Under systemd, a setting may also come as a credential (``LoadCredential=``): a file named
after the variable, lower case (``mailpath_collector_database_url``), in
``$CREDENTIALS_DIRECTORY``, so a PostgreSQL password stays out of the unit and the environment.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from mailpath.collector.errors import ConfigError
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_DATABASE_FILE = "collector.db"
MAX_PAGE = 1000  # the most items one list page may hold (?limit=)
LABELS = {
    "database_url": "database URL",
    "listen": "listen address",
    "data_dir": "data directory",
    "body_limit": "body limit",
    "retention_age": "retention age",
    "retention_interval": "retention interval",
    "access_log": "access log setting",
}


class CollectorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILPATH_COLLECTOR_", extra="forbid")

    database_url: str | None = None
    listen: str = DEFAULT_LISTEN
    data_dir: Path = Path(".")
    body_limit: int = Field(10 * 1024 * 1024, ge=1024, le=1024**3)
    retention_age: dt.timedelta = dt.timedelta(days=30)
    retention_interval: dt.timedelta = dt.timedelta(hours=1)
    access_log: bool = True

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        return None if value is None or value == "" else normalize_database_url(value)

    @field_validator("retention_age", "retention_interval", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("retention_interval")
    @classmethod
    def _interval(cls, value: dt.timedelta) -> dt.timedelta:
        if value.total_seconds() <= 0:
            raise ValueError("must be more than 0 seconds")
        return value

    @field_validator("retention_age")
    @classmethod
    def _age(cls, value: dt.timedelta) -> dt.timedelta:
        if value.total_seconds() < 0:
            raise ValueError("must be 0 (keep everything) or more")
        return value

    @property
    def database(self) -> str:
        """The SQLAlchemy URL to use: the one given, else ``collector.db`` in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / DEFAULT_DATABASE_FILE).resolve()}"

    @property
    def address(self) -> tuple[str, int]:
        return parse_listen(self.listen)


def load_settings(**given: object) -> CollectorSettings:
    """Settings from the environment, overridden by the non-None arguments; a bad value is a
    :class:`ConfigError` with one line naming it."""
    values = {k: v for k, v in given.items() if v is not None}
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")  # systemd's LoadCredential=
    if credentials and Path(credentials).is_dir():
        values["_secrets_dir"] = credentials
    try:
        return CollectorSettings(**values)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"invalid {LABELS.get(field, field or 'setting')}: {message}") from None


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str) -> object:
    """Seconds (``86400``, ``0.5``) or a number with a unit (``30d``, ``12h``, ``90m``, ``45s``)
    as a timedelta; anything else is left to pydantic (ISO 8601 ``P30D``, ``HH:MM:SS``)."""
    text = value.strip().lower()
    number, unit = (text[:-1], text[-1]) if text[-1:] in UNITS else (text, "s")
    try:
        return dt.timedelta(seconds=float(number) * UNITS[unit])
    except (ValueError, OverflowError):
        return value


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); port 0 takes any free port."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8080 or [::1]:8080)")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"{value!r}: unclosed [ around the IPv6 address")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{value!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{value!r}: put an IPv6 address in brackets, e.g. [::1]:8080")
    if any(c.isspace() for c in host) or "/" in host:
        raise ValueError(f"{value!r}: {host!r} is not a host name or address")
    return host, int(port)


def normalize_database_url(value: str) -> str:
    """A database URL the collector supports, with PostgreSQL mapped to psycopg 3:
    ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg://``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        raise ValueError("not a database URL (sqlite:///PATH or postgresql://USER@HOST/DB)") from None
    shown = url.render_as_string(hide_password=True)
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        url = url.set(drivername="postgresql+psycopg")
        if not url.database:
            raise ValueError(f"{shown!r} names no database")
    elif url.drivername in ("sqlite", "sqlite+pysqlite"):
        if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
            raise ValueError(f"{shown!r}: give a file (sqlite:///PATH); a memory database is not kept")
        url = url.set(drivername="sqlite")
    else:
        raise ValueError(f"{shown!r}: unsupported database (sqlite:///PATH or postgresql://…)")
    return url.render_as_string(hide_password=False)
