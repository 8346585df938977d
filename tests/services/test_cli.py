"""``mailpath collector``: tokens made, listed and revoked through the CLI while the collector
runs (a revocation holds from the next request), and each way ``serve`` refuses to run: one
line, exit 2 for bad input, 3 when it cannot run (a database with a newer schema, a port
taken, a database that does not answer)."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess

from tests.conftest import MAILPATH
from tests.services.conftest import batch, clean_env, finding


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MAILPATH, "collector", *args], capture_output=True, text=True, timeout=timeout, env=clean_env()
    )


def _one_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mailpath: error: "), r.stderr
    return lines[0]


def test_tokens_through_the_cli(collector, name):
    db = ("--database", collector.database)
    made = _cli("token", "create", "--agent", name, "--json", *db)
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert set(created) == {"token", "agent", "role", "fleet"}
    assert (created["agent"], created["role"], created["fleet"]) == (name, "agent", False)
    agent_token = created["token"]
    made = _cli("token", "create", "--agent", name + "-v", "--role", "viewer", *db)
    assert made.returncode == 0, made.stderr
    viewer_token = made.stdout.strip()  # the token alone on stdout
    assert viewer_token.startswith("mpc_") and "shown once" in made.stderr and viewer_token not in made.stderr

    with collector.client(agent_token) as c:
        assert c.post("/v1/findings", json=batch(finding(name + ".test"))).status_code == 200
        assert c.get("/v1/agents", headers={"Authorization": f"Bearer {viewer_token}"}).status_code == 200

        listed = _cli("token", "list", *db)
        assert listed.returncode == 0, listed.stderr
        assert agent_token[:12] in listed.stdout and viewer_token[:12] in listed.stdout
        assert agent_token not in listed.stdout and agent_token[12:] not in listed.stdout
        entries = {t["prefix"]: t for t in json.loads(_cli("token", "list", "--json", *db).stdout)["tokens"]}
        assert entries[agent_token[:12]]["agent"] == name and entries[agent_token[:12]]["revoked_at"] is None

        revoked = _cli("token", "revoke", agent_token[:12], *db)
        assert revoked.returncode == 0 and "revoked" in revoked.stderr, revoked.stderr
        r = c.post("/v1/findings", json=batch(finding(name + ".test")))
        assert r.status_code == 401 and r.json()["detail"] == "invalid or revoked token"

        viewer_id = str(entries[viewer_token[:12]]["id"])
        assert _cli("token", "revoke", viewer_id, *db).returncode == 0
        assert c.get("/v1/agents", headers={"Authorization": f"Bearer {viewer_token}"}).status_code == 401
        again = _cli("token", "revoke", viewer_id, "--json", *db)
        assert again.returncode == 0 and json.loads(again.stdout)["revoked_now"] is False

    unknown = _cli("token", "revoke", "mpc_zzzzzzzz", *db)
    assert unknown.returncode == 2 and "no token" in _one_line(unknown)
    bad_name = _cli("token", "create", "--agent", "two words", *db)
    assert bad_name.returncode == 2 and "invalid agent name" in _one_line(bad_name)
    bad_role = _cli("token", "create", "--agent", name, "--role", "admin", *db)
    assert bad_role.returncode == 2 and "--role" in _one_line(bad_role)


def test_bad_database_urls_and_listen_addresses_are_exit_2(tmp_path):
    r = _cli("token", "list", "--database", "mysql://db.invalid/x")
    assert r.returncode == 2 and "unsupported database" in _one_line(r)
    r = _cli("serve", "--database", f"sqlite:///{tmp_path}/c.db", "--listen", "127.0.0.1:99999")
    assert r.returncode == 2 and "listen address" in _one_line(r)
    r = _cli("serve", "--data-dir", str(tmp_path / "missing"), "--listen", "127.0.0.1:0")
    assert r.returncode == 2 and "does not exist" in _one_line(r)


def test_a_database_that_does_not_answer_is_exit_3_without_its_password():
    # 127.0.0.1 port 1: nothing listens; the connection is refused at once
    r = _cli("token", "list", "--database", "postgresql://mailpath:s3cret@127.0.0.1:1/mailpath")
    line = _one_line(r)
    assert r.returncode == 3 and "cannot use the database" in line and "s3cret" not in line


def test_a_taken_port_is_exit_3(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = _cli("serve", "--database", f"sqlite:///{tmp_path}/c.db", "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 3 and f"cannot listen on 127.0.0.1:{port}" in _one_line(r)


def test_a_database_with_a_newer_schema_is_refused_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path}/c.db"
    assert _cli("token", "list", "--database", url).returncode == 0  # made at this collector's head
    with sqlite3.connect(tmp_path / "c.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    r = _cli("serve", "--database", url, "--listen", "127.0.0.1:0", timeout=30)
    line = _one_line(r)
    assert r.returncode == 3 and "schema revision 9999, newer than this collector knows" in line
    assert r.stdout == ""
    r = _cli("token", "create", "--agent", "late", "--database", url)
    assert r.returncode == 3 and "newer" in _one_line(r)
