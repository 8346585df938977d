"""The collector's settings: the environment, arguments over it, and systemd credentials."""

from __future__ import annotations

import pytest
from mailpath.collector.errors import ConfigError
from mailpath.collector.settings import load_settings


def test_a_credential_file_gives_the_database_url(tmp_path, monkeypatch):
    monkeypatch.delenv("MAILPATH_COLLECTOR_DATABASE_URL", raising=False)
    (tmp_path / "mailpath_collector_database_url").write_text("postgresql://u:secret@db.test/mp\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert load_settings().database == "postgresql+psycopg://u:secret@db.test/mp"
    # an argument still wins, and the environment wins over the credential
    assert load_settings(database_url="sqlite:///x.db").database == "sqlite:///x.db"
    monkeypatch.setenv("MAILPATH_COLLECTOR_DATABASE_URL", "sqlite:///env.db")
    assert load_settings().database == "sqlite:///env.db"


def test_without_credentials_the_default_is_sqlite_in_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MAILPATH_COLLECTOR_DATABASE_URL", raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "absent"))
    assert load_settings(data_dir=tmp_path).database == f"sqlite:///{tmp_path.resolve()}/collector.db"


def test_a_bad_value_is_one_line_naming_it(monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match=r"^invalid listen address"):
        load_settings(listen="nowhere")
