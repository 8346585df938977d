"""The spool: every finding on local disk from its diagnosis until each sink has it.

One SQLite file in WAL mode with ``synchronous=FULL``: :meth:`Spool.add` returns once its
transaction is on disk (fsync), so a finding that add() accepted survives a crash or a power
cut at any instant. A finding leaves the spool when every sink the delivery names has
acknowledged it, or dead-lettered it (a sink refused it for good: the dead-letter table keeps
the finding, the sink and its reason). Sinks are tracked each on its own (table ``done``), so
a sink that is down holds back none of the others, and a finding is sent once more to a sink
only when a crash came between the sink's answer and the record of it (the collector is
idempotent on the finding id; for the other sinks, delivery is at least once).

The spool is bounded, by count and by age: past ``max_count`` findings the oldest go first,
and a finding spooled longer than ``max_age`` seconds ago is let go; each is counted in
``dropped`` (kept in the file, so ``mailpath agent status`` reads it from another process).
When the disk is full, add() raises :class:`SpoolFull` and the findings it was given are
counted as dropped too; nothing already spooled is touched (SQLite rolls the transaction back).

Several processes may open the same file (the daemon writes; ``status`` reads); within one
process a Spool may be used from several threads (a lock serialises them).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS findings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    spooled_at REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS findings_spooled_at ON findings (spooled_at);
CREATE TABLE IF NOT EXISTS done (
    sink TEXT NOT NULL,
    seq INTEGER NOT NULL REFERENCES findings (seq) ON DELETE CASCADE,
    PRIMARY KEY (sink, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS done_seq ON done (seq);
CREATE TABLE IF NOT EXISTS dead (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    finding_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


class SpoolError(Exception):
    """The spool cannot do what was asked (cannot open the file, not a spool, I/O error)."""


class SpoolFull(SpoolError):
    """The spool's disk is full: the findings given to add() were not spooled (and are counted
    as dropped)."""


@dataclass(frozen=True)
class SpoolCounts:
    pending: int  # findings still to be delivered to at least one sink
    dead: int  # dead letters kept
    dropped: int  # findings let go: the bounds, or not spooled at all (disk full)


@dataclass(frozen=True)
class DeadLetter:
    finding_id: str
    sink: str
    reason: str
    at: float  # Unix time
    finding: dict


@dataclass(frozen=True)
class Spooled:
    """A finding in the spool: ``seq`` orders the spool (oldest first)."""

    seq: int
    finding_id: str
    finding: dict


class Spool:
    """The spool file at ``path`` (made, with its folder, when missing)."""

    def __init__(self, path: Path, *, max_count: int, max_age: float) -> None:
        if max_count < 1 or max_age <= 0:
            raise ValueError("the spool's bounds must be positive")
        self.path = Path(path)
        self.max_count = max_count
        self.max_age = max_age
        self._lock = threading.RLock()
        self._unsaved_drops = 0  # dropped while the file could not be written (disk full)
        self._on_add: list[Callable[[], None]] = []
        self._on_drop: list[Callable[[int], None]] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        except (OSError, sqlite3.Error) as e:
            raise SpoolError(f"cannot open the spool {self.path}: {e}") from None
        try:
            self._db.execute("PRAGMA busy_timeout = 10000")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise SpoolError(f"the spool {self.path} cannot use WAL (journal mode {mode})")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA journal_size_limit = 8388608")
            if not self._has_schema():
                with self._tx() as c:
                    for statement in _statements(SCHEMA):
                        c.execute(statement)
        except sqlite3.Error as e:
            self._db.close()
            raise SpoolError(f"cannot use the spool {self.path}: {e}") from None

    # -- hooks -----------------------------------------------------------------------------

    def subscribe(
        self, *, on_add: Callable[[], None] | None = None, on_drop: Callable[[int], None] | None = None
    ) -> None:
        """Call ``on_add()`` after findings were spooled, ``on_drop(n)`` when n were dropped."""
        if on_add is not None:
            self._on_add.append(on_add)
        if on_drop is not None:
            self._on_drop.append(on_drop)

    def unsubscribe(self, *callbacks: Callable) -> None:
        for callback in callbacks:
            for hooks in (self._on_add, self._on_drop):
                if callback in hooks:
                    hooks.remove(callback)

    # -- the interface ---------------------------------------------------------------------

    def add(self, findings: list[dict]) -> None:
        """Spool ``findings`` (finding objects as JSON dicts, each with an ``id``); durable when
        this returns. A finding whose id is already spooled is not added twice. Raises
        :class:`SpoolFull` (disk full) or :class:`SpoolError`: then none of them is spooled,
        and they are counted as dropped."""
        if not findings:
            return
        now = time.time()
        rows = []
        for f in findings:
            fid = f.get("id") if isinstance(f, dict) else None
            if not isinstance(fid, str) or not fid:
                raise ValueError("a finding to spool must be a dict with an 'id'")
            rows.append((fid, now, json.dumps(f, separators=(",", ":"), ensure_ascii=False)))
        with self._lock:
            try:
                with self._tx() as c:
                    c.executemany(
                        "INSERT OR IGNORE INTO findings (id, spooled_at, doc) VALUES (?, ?, ?)", rows
                    )
                    dropped = self._enforce(c, now)
                    if self._unsaved_drops:
                        self._count(c, "dropped", self._unsaved_drops)
                self._unsaved_drops = 0
            except sqlite3.Error as e:
                self._unsaved_drops += len(rows)
                self._dropped(len(rows))
                if _is_full(e):
                    raise SpoolFull(
                        f"the spool's disk is full ({self.path}): {len(rows)} finding(s) not spooled, "
                        "counted as dropped"
                    ) from None
                raise SpoolError(
                    f"cannot write to the spool {self.path}: {e}; {len(rows)} finding(s) not spooled, "
                    "counted as dropped"
                ) from None
        if dropped:
            self._dropped(dropped)
        for callback in self._on_add:
            callback()

    def counts(self) -> SpoolCounts:
        with self._lock:
            pending, dead, dropped = self._read(
                "SELECT (SELECT count(*) FROM findings), (SELECT count(*) FROM dead),"
                " (SELECT value FROM counters WHERE name = 'dropped')"
            ).fetchone()
            return SpoolCounts(pending, dead, (dropped or 0) + self._unsaved_drops)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters first."""
        with self._lock:
            rows = self._read(
                "SELECT finding_id, sink, reason, at, doc FROM dead ORDER BY n DESC LIMIT ?", (limit,)
            ).fetchall()
        return [DeadLetter(fid, sink, reason, at, json.loads(doc)) for fid, sink, reason, at, doc in rows]

    def set_meta(self, key: str, value: str) -> None:
        with self._lock, self._write() as c:
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._read("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- for the delivery ------------------------------------------------------------------

    def pending(self, sink: str, limit: int, *, upto: int | None = None) -> list[Spooled]:
        """The oldest findings ``sink`` has not yet had (at most ``limit``; with ``upto``, none
        spooled after that seq)."""
        with self._lock:
            rows = self._read(
                "SELECT f.seq, f.id, f.doc FROM findings f"
                " WHERE f.seq <= ? AND NOT EXISTS (SELECT 1 FROM done d WHERE d.sink = ? AND d.seq = f.seq)"
                " ORDER BY f.seq LIMIT ?",
                (upto if upto is not None else 2**62, sink, limit),
            ).fetchall()
        return [Spooled(seq, fid, json.loads(doc)) for seq, fid, doc in rows]

    def pending_for(self, sink: str) -> int:
        with self._lock:
            return self._read(
                "SELECT count(*) FROM findings f"
                " WHERE NOT EXISTS (SELECT 1 FROM done d WHERE d.sink = ? AND d.seq = f.seq)",
                (sink,),
            ).fetchone()[0]

    def last_seq(self) -> int:
        with self._lock:
            return self._read("SELECT coalesce(max(seq), 0) FROM findings").fetchone()[0]

    def ack(self, sink: str, seqs: Sequence[int], sinks: Sequence[str]) -> None:
        """``sink`` has these findings; those every sink of ``sinks`` has leave the spool."""
        with self._lock, self._write() as c:
            self._settle(c, sink, seqs, sinks)

    def dead_letter(self, sink: str, items: Iterable[tuple[Spooled, str]], sinks: Sequence[str]) -> None:
        """``sink`` refused these findings for good (each with its reason): they go to the
        dead-letter table and count as done for ``sink``."""
        items = list(items)
        now = time.time()
        with self._lock, self._write() as c:
            c.executemany(
                "INSERT INTO dead (finding_id, sink, reason, at, doc) VALUES (?, ?, ?, ?, ?)",
                [
                    (s.finding_id, sink, reason, now, json.dumps(s.finding, separators=(",", ":")))
                    for s, reason in items
                ],
            )
            c.execute(
                "DELETE FROM dead WHERE n <= (SELECT max(n) FROM dead) - ?", (self.max_count,)
            )  # the dead-letter table is bounded like the spool
            self._settle(c, sink, [s.seq for s, _ in items], sinks)

    def expire(self) -> int:
        """Let go of findings older than ``max_age`` (counted as dropped); how many."""
        with self._lock:
            cutoff = time.time() - self.max_age
            if (
                self._read("SELECT 1 FROM findings WHERE spooled_at < ? LIMIT 1", (cutoff,)).fetchone()
                is None
            ):
                return 0
            with self._write() as c:
                dropped = self._enforce(c, time.time())
        if dropped:
            self._dropped(dropped)
        return dropped

    def check(self) -> str:
        """SQLite's ``quick_check``: ``ok`` when the file is sound."""
        with self._lock:
            return "; ".join(row[0] for row in self._read("PRAGMA quick_check").fetchall())

    # -- inside ----------------------------------------------------------------------------

    def _has_schema(self) -> bool:
        names = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {"findings", "done", "dead", "counters", "meta"} <= names

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: the write lock from the start)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            with self._tx() as c:
                yield c
        except sqlite3.Error as e:
            kind = SpoolFull if _is_full(e) else SpoolError
            raise kind(f"cannot write to the spool {self.path}: {e}") from None

    def _read(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as e:
            raise SpoolError(f"cannot read the spool {self.path}: {e}") from None

    def _enforce(self, c: sqlite3.Connection, now: float) -> int:
        """The bounds: findings past ``max_age`` go, then the oldest past ``max_count``."""
        dropped = c.execute("DELETE FROM findings WHERE spooled_at < ?", (now - self.max_age,)).rowcount
        over = c.execute("SELECT count(*) FROM findings").fetchone()[0] - self.max_count
        if over > 0:
            dropped += c.execute(
                "DELETE FROM findings WHERE seq IN (SELECT seq FROM findings ORDER BY seq LIMIT ?)", (over,)
            ).rowcount
        if dropped:
            self._count(c, "dropped", dropped)
        return dropped

    def _count(self, c: sqlite3.Connection, name: str, n: int) -> None:
        c.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

    def _settle(self, c: sqlite3.Connection, sink: str, seqs: Sequence[int], sinks: Sequence[str]) -> None:
        others = [s for s in dict.fromkeys(sinks) if s != sink]
        if not others:  # the one sink: nothing to track
            c.executemany("DELETE FROM findings WHERE seq = ?", [(s,) for s in seqs])
            return
        c.executemany(
            "INSERT OR IGNORE INTO done (sink, seq) SELECT ?, seq FROM findings WHERE seq = ?",
            [(sink, s) for s in seqs],
        )
        marks = ", ".join("?" * len(others))
        c.executemany(
            f"DELETE FROM findings WHERE seq = ? AND (SELECT count(*) FROM done d"
            f" WHERE d.seq = ? AND d.sink IN ({marks})) = ?",
            [(s, s, *others, len(others)) for s in seqs],
        )

    def _dropped(self, n: int) -> None:
        for callback in self._on_drop:
            callback(n)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _is_full(e: sqlite3.Error) -> bool:
    return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(e)
