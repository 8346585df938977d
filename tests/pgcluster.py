"""A PostgreSQL server of our own, for the tests and the benchmarks: Debian's ``postgresql``
binaries (``/usr/lib/postgresql/*/bin``), ``initdb`` into a new temporary folder, ``postgres``
listening on 127.0.0.1 with a free port and its unix socket inside that folder (never the
system's cluster, never port 5432 unless it happens to be free), trust authentication for one
superuser. As root it runs as the ``postgres`` user (``nobody`` when there is none): PostgreSQL
refuses to run as root. Stopped by its pid: SIGINT (the fast shutdown ``pg_ctl stop -m fast``
sends), then SIGKILL if it lingers (its backends end when they see it gone); the folder is
removed.

``fast=True`` (the tests) turns durability off (``fsync``, ``synchronous_commit``,
``full_page_writes``); the benchmark keeps PostgreSQL's defaults.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SUPERUSER = "mailpath"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


def bindir() -> Path:
    """The newest installed PostgreSQL's bin folder."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise PostgresUnavailable(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "`make deps` installs Debian's postgresql package"
        )
    return found[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    """One server: ``start()``, ``create_database(name)`` -> URL, ``stop()`` (or a ``with``)."""

    def __init__(self, *, fast: bool = True, max_connections: int = 200) -> None:
        self.bin = bindir()
        self.fast = fast
        self.max_connections = max_connections
        self.folder = Path(tempfile.mkdtemp(prefix="mailpath-pg-"))
        self.data = self.folder / "data"
        self.sockets = self.folder / "run"
        self.log_path = self.folder / "postgres.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._account = _account()

    # -- life --------------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> PostgresCluster:
        try:
            self._initdb()
            for attempt in range(3):  # a port taken between free_port() and bind: try another
                self.port = free_port()
                self._launch()
                if self._wait_ready(timeout):
                    return self
                if "could not bind" not in self.log or attempt == 2:
                    break
            raise RuntimeError(f"PostgreSQL did not start:\n{self.log[-3000:]}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Fast shutdown by pid, SIGKILL if it lingers; the folder removed."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- use ---------------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres", **kw):
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=database, connect_timeout=5, **kw
        )

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL (``postgresql://``, as a user would give it)."""
        from psycopg import sql

        with self.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    # -- inside ------------------------------------------------------------------------------

    def _run_as(self) -> dict:
        if self._account is None:
            return {}
        uid, gid = self._account
        return {"user": uid, "group": gid, "extra_groups": []}

    def _initdb(self) -> None:
        self.sockets.mkdir()
        if self._account is not None:
            for path in (self.folder, self.sockets):
                os.chown(path, *self._account)
        r = subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            cwd=self.folder,
            timeout=120,
            **self._run_as(),
        )
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")

    def _launch(self) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.sockets),
            "max_connections": str(self.max_connections),
            "logging_collector": "off",
        }
        if self.fast:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        args = [str(self.bin / "postgres"), "-D", str(self.data)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.folder,
                start_new_session=True,  # a Ctrl-C at the terminal is the tests' to handle, not its
                **self._run_as(),
            )

    def _wait_ready(self, timeout: float) -> bool:
        import psycopg

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with self.connect() as conn:
                    conn.execute("SELECT 1")
                return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        return False


def _account() -> tuple[int, int] | None:
    """(uid, gid) to run as when root: ``postgres``, else ``nobody``; None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root and there is no postgres or nobody user to run PostgreSQL as")
