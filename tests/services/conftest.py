"""The collector, for real: ``mailpath collector serve`` in a subprocess on 127.0.0.1 with a
free port and a temporary SQLite file, stopped (SIGTERM, then SIGKILL) after its tests, even
when they fail. Clients talk to it with httpx (trust_env off: no proxy ever sees the traffic).
Nothing here connects anywhere but 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from mailpath.agent.finding import Finding

from tests.conftest import MAILPATH

LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any MAILPATH_COLLECTOR_* setting of the caller's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPATH_COLLECTOR_")}
    return {**env, **extra}


class Collector:
    """A collector process: its URL, database URL and log (stdout and stderr together)."""

    def __init__(self, folder: Path, **settings: str) -> None:
        self.folder = folder
        self.database = f"sqlite:///{folder / 'collector.db'}"
        self.log_path = folder / "collector.log"
        self.env = clean_env(**{f"MAILPATH_COLLECTOR_{k.upper()}": v for k, v in settings.items()})
        self.proc: subprocess.Popen | None = None
        self.listen = "127.0.0.1:0"  # a fixed port when a test needs one (an agent's URL set before)
        self.url = ""
        self.tokens: list[str] = []  # every token made for this collector by token()

    def start(self, timeout: float = 30) -> Collector:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [MAILPATH, "collector", "serve", "--database", self.database, "--listen", self.listen],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        deadline = time.monotonic() + timeout
        while not self.url:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the collector exited with {self.proc.returncode}:\n{self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the collector did not start:\n{self.log}")
            found = LISTENING.search(self.log)
            self.url = found.group(1) if found else ""
            time.sleep(0.05)
        with httpx.Client(trust_env=False, timeout=5) as c:
            while True:
                try:
                    if c.get(self.url + "/healthz").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"the collector does not answer:\n{self.log}")
                time.sleep(0.05)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def client(self, token: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, trust_env=False, timeout=30, **kw)

    def token(self, agent: str, role: str = "agent") -> str:
        """A new token, made in this process (the CLI itself is tested on its own)."""
        from mailpath.collector import admin

        token, _ = admin.create_token(admin.settings_for(self.database), agent, role)
        self.tokens.append(token)
        return token

    def agent_tokens(self, agents: list[str]) -> list[str]:
        """A new agent token for each name, made in one transaction (for many agents at once)."""
        from mailpath.collector import auth
        from mailpath.collector.db import make_engine, write_session
        from mailpath.collector.settings import normalize_database_url

        engine = make_engine(normalize_database_url(self.database))
        try:
            with write_session(engine) as session:
                tokens = [auth.create_token(session, agent)[0] for agent in agents]
        finally:
            engine.dispose()
        self.tokens.extend(tokens)
        return tokens


@pytest.fixture(scope="session")
def postgres_cluster():
    """The PostgreSQL server started for the session (:mod:`tests.pgcluster`: initdb into a
    temporary folder, 127.0.0.1 and a free port), stopped at the end; None when
    MAILPATH_TEST_DATABASE_URL names a database to use instead."""
    if os.environ.get("MAILPATH_TEST_DATABASE_URL"):
        yield None
        return
    from tests.pgcluster import PostgresCluster

    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster) -> str:
    """A PostgreSQL database for the session: MAILPATH_TEST_DATABASE_URL's, else a new one on
    :func:`postgres_cluster`."""
    return os.environ.get("MAILPATH_TEST_DATABASE_URL") or postgres_cluster.create_database("mailpath_tests")


DATABASES = ["sqlite", "postgresql"]


def pytest_configure(config):
    config.addinivalue_line("markers", "last: run after every other test on the same collector")


@pytest.hookimpl(trylast=True)  # after pytest has grouped the tests by the collector's database
def pytest_collection_modifyitems(items):
    """Tests marked ``last`` move behind the last test that shares their collector."""

    def database(item):
        spec = getattr(item, "callspec", None)
        return spec.params.get("collector") if spec else None

    for item in [i for i in items if i.get_closest_marker("last")]:
        items.remove(item)
        same = [k for k, other in enumerate(items) if database(other) == database(item)]
        items.insert(same[-1] + 1 if same else len(items), item)


@pytest.fixture(scope="session", params=DATABASES)
def collector(request, tmp_path_factory):
    """The collector most tests share (a 256 KiB body limit, retention of 30 days), once on a
    new SQLite file and once on PostgreSQL (:func:`postgres_url`): every test that takes it
    runs on both. The tests name their agents and targets uniquely, so a used database is fine."""
    server = Collector(tmp_path_factory.mktemp("collector"), body_limit="262144")
    if request.param == "postgresql":
        server.database = request.getfixturevalue("postgres_url")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def name() -> str:
    """A name no other test uses: agents and targets of each test are its own."""
    return f"t{uuid.uuid4().hex[:10]}"


def finding(
    target: str = "mx.example.test",
    port: int = 25,
    cause: str = "firewall",
    *,
    created_at: dt.datetime | None = None,
    verdict: str = "filtered",
    hop: int | None = 2,
    severity: str | None = None,
    hostname: str = "agent-host",
    version: str = "0.1.0",
    cloud: dict | None = None,
) -> dict:
    """A valid mailpath.finding/v1 object (as JSON)."""
    location = None if cause == "none" else {"kind": "hop", "hop": hop, "address": "198.18.2.1"}
    return Finding.model_validate(
        {
            "id": str(uuid.uuid4()),
            "created_at": (created_at or dt.datetime.now(dt.UTC)).isoformat(),
            "agent": {"hostname": hostname, "version": version, "cloud": cloud},
            "target": target,
            "port": port,
            "addresses": [{"address": "198.18.3.2", "verdict": verdict}],
            "cause": cause,
            "location": location,
            "headline": f"{port} on {target}: {cause}",
            "severity": severity or ("info" if cause == "none" else "error"),
        }
    ).to_json_dict()


def batch(*findings: dict) -> dict:
    return {"schema": "mailpath.diagnose/v1", "findings": list(findings)}


def pages(client: httpx.Client, path: str, **params) -> list[dict]:
    """Every item of a list endpoint, page by page."""
    items, cursor = [], None
    while True:
        r = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if not cursor:
            return items
