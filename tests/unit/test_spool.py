"""The spool on its own: durable, ordered, per-sink, bounded by count and age, dead letters,
meta, several connections to one file; and, under hypothesis, against a model of itself."""

from __future__ import annotations

import sqlite3
import uuid

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from mailpath.agent.daemon import spool as spool_module
from mailpath.agent.daemon.spool import Spool, SpoolCounts, SpoolError


def finding(n: int = 0, **extra) -> dict:
    return {"id": str(uuid.uuid4()), "target": f"t{n}.example.test", "port": 25, **extra}


@pytest.fixture
def spool(tmp_path):
    s = Spool(tmp_path / "spool" / "spool.db", max_count=1000, max_age=3600)
    yield s
    s.close()


def test_findings_stay_until_acked_and_survive_a_reopen(tmp_path):
    path = tmp_path / "spool.db"
    docs = [finding(i, nested={"a": [1, 2.5, None, "é"]}) for i in range(5)]
    with Spool(path, max_count=10, max_age=60) as s:
        s.add(docs)
        assert s.counts() == SpoolCounts(pending=5, dead=0, dropped=0)
    with Spool(path, max_count=10, max_age=60) as s:  # another process would see the same
        pending = s.pending("collector", 3)
        assert [p.finding for p in pending] == docs[:3]  # oldest first, whole
        s.ack("collector", [p.seq for p in pending], ["collector"])
        assert [p.finding for p in s.pending("collector", 10)] == docs[3:]
        assert s.counts().pending == 2
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_synchronous_full_on_the_spool_connection(spool):
    assert spool._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: fsync at every commit


def test_an_id_already_spooled_is_not_added_twice(spool):
    doc = finding()
    spool.add([doc])
    spool.add([doc, dict(doc)])
    assert spool.counts().pending == 1


def test_a_finding_without_an_id_is_refused_and_nothing_is_spooled(spool):
    with pytest.raises(ValueError, match="id"):
        spool.add([finding(), {"target": "x"}])
    assert spool.counts().pending == 0


def test_several_sinks_each_tracked_and_the_finding_leaves_with_the_last(spool):
    sinks = ["collector", "otlp", "stdout"]
    docs = [finding(i) for i in range(4)]
    spool.add(docs)
    seqs = [p.seq for p in spool.pending("collector", 10)]
    spool.ack("collector", seqs, sinks)
    assert spool.pending("collector", 10) == [] and spool.counts().pending == 4
    assert spool.pending_for("otlp") == 4
    spool.ack("otlp", seqs[:2], sinks)
    spool.dead_letter("stdout", [(spool.pending("stdout", 1)[0], "refused")], sinks)
    # 0: acked by collector and otlp, dead for stdout: done everywhere
    assert [p.finding["id"] for p in spool.pending("otlp", 10)] == [d["id"] for d in docs[2:]]
    assert spool.counts().pending == 3
    spool.ack("stdout", seqs[1:], sinks)
    assert spool.counts().pending == 2  # 1 has left; 2 and 3 wait for otlp
    spool.ack("otlp", seqs[2:], sinks)
    assert spool.counts() == SpoolCounts(pending=0, dead=1, dropped=0)


def test_a_sink_removed_from_the_configuration_no_longer_holds_findings_back(spool):
    docs = [finding(i) for i in range(2)]
    spool.add(docs)
    seqs = [p.seq for p in spool.pending("collector", 10)]
    spool.ack("collector", seqs[:1], ["collector", "otlp"])
    assert spool.counts().pending == 2
    spool.ack("collector", seqs, ["collector"])  # otlp is gone from the configuration
    assert spool.counts().pending == 0


def test_dead_letters_keep_the_finding_the_sink_and_the_reason(spool):
    docs = [finding(i) for i in range(3)]
    spool.add(docs)
    first, second = spool.pending("collector", 2)
    spool.dead_letter(
        "collector", [(first, "422 schema-violation: port"), (second, "413 too-large")], ["collector"]
    )
    letters = spool.dead_letters()
    assert [(d.finding_id, d.sink, d.reason) for d in letters] == [
        (docs[1]["id"], "collector", "413 too-large"),  # newest first
        (docs[0]["id"], "collector", "422 schema-violation: port"),
    ]
    assert letters[0].finding == docs[1] and letters[0].at > 0
    assert spool.counts() == SpoolCounts(pending=1, dead=2, dropped=0)
    assert len(spool.dead_letters(limit=1)) == 1


def test_past_max_count_the_oldest_go_and_are_counted(tmp_path):
    drops: list[int] = []
    with Spool(tmp_path / "s.db", max_count=5, max_age=3600) as s:
        s.subscribe(on_drop=drops.append)
        docs = [finding(i) for i in range(8)]
        s.add(docs[:4])
        s.add(docs[4:])
        assert [p.finding["id"] for p in s.pending("c", 10)] == [d["id"] for d in docs[3:]]
        assert s.counts() == SpoolCounts(pending=5, dead=0, dropped=3)
        assert drops == [3]
    with Spool(tmp_path / "s.db", max_count=5, max_age=3600) as s:
        assert s.counts().dropped == 3  # kept in the file


def test_past_max_age_findings_are_let_go_and_counted(tmp_path, monkeypatch):
    now = [1_000_000.0]

    class Clock:
        @staticmethod
        def time() -> float:
            return now[0]

    monkeypatch.setattr(spool_module, "time", Clock)
    drops: list[int] = []
    with Spool(tmp_path / "s.db", max_count=100, max_age=60) as s:
        s.subscribe(on_drop=drops.append)
        old = [finding(i) for i in range(3)]
        s.add(old)
        now[0] += 30
        young = [finding(10)]
        s.add(young)
        assert s.expire() == 0
        now[0] += 31  # the first three are 61 s old
        assert s.expire() == 3
        assert [p.finding for p in s.pending("c", 10)] == young
        assert s.counts().dropped == 3 and drops == [3]


def test_meta_is_kept(spool, tmp_path):
    assert spool.get_meta("last_round") is None
    spool.set_meta("last_round", '{"at": 1}')
    spool.set_meta("last_round", '{"at": 2}')
    assert spool.get_meta("last_round") == '{"at": 2}'


def test_two_connections_to_one_file_see_each_other(tmp_path):
    path = tmp_path / "s.db"
    with (
        Spool(path, max_count=100, max_age=3600) as writer,
        Spool(path, max_count=100, max_age=3600) as reader,
    ):
        writer.add([finding(1)])
        assert reader.counts().pending == 1
        (p,) = reader.pending("c", 5)
        reader.ack("c", [p.seq], ["c"])
        assert writer.counts().pending == 0


def test_a_file_that_is_not_a_spool_is_a_clear_error(tmp_path):
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not SQLite at all" * 100)
    with pytest.raises(SpoolError, match=str(path)):
        Spool(path, max_count=10, max_age=10)
    with pytest.raises(SpoolError, match="cannot open"):
        Spool(path / "under-a-file.db", max_count=10, max_age=10)


def test_pending_upto_leaves_out_what_came_later(spool):
    spool.add([finding(1), finding(2)])
    upto = spool.last_seq()
    spool.add([finding(3)])
    assert len(spool.pending("c", 10, upto=upto)) == 2
    assert spool.check() == "ok"


# -- against a model ---------------------------------------------------------------------

SINKS = ["collector", "otlp"]
MAX = 6


class SpoolModel(RuleBasedStateMachine):
    """Random adds (new ids and repeats), acks and dead letters by two sinks, against a list."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile
        from pathlib import Path

        # on tmpfs when there is one: fsync is free there, and the model takes many commits
        shm = Path("/dev/shm")
        self.folder = tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None)
        self.spool = Spool(Path(self.folder.name) / "s.db", max_count=MAX, max_age=3600)
        self.model: list[tuple[str, set[str]]] = []  # (id, sinks done), oldest first
        self.dropped = self.dead = 0
        self.seen: list[str] = []

    @rule(n=st.integers(1, 4), repeat=st.booleans())
    def add(self, n, repeat):
        docs = [finding(i) for i in range(n)]
        if repeat and self.seen:
            docs[0] = {"id": self.seen[-1]}
        self.spool.add(docs)
        present = {fid for fid, _ in self.model}
        for d in docs:
            if d["id"] not in present:
                self.model.append((d["id"], set()))
                present.add(d["id"])
            self.seen.append(d["id"])
        over = len(self.model) - MAX
        if over > 0:
            del self.model[:over]
            self.dropped += over

    def _settle(self):
        self.model = [(fid, done) for fid, done in self.model if not set(SINKS) <= done]

    @precondition(lambda self: self.model)
    @rule(sink=st.sampled_from(SINKS), k=st.integers(1, 4))
    def ack(self, sink, k):
        batch = self.spool.pending(sink, k)
        self.spool.ack(sink, [p.seq for p in batch], SINKS)
        ids = {p.finding_id for p in batch}
        for fid, done in self.model:
            if fid in ids:
                done.add(sink)
        self._settle()

    @precondition(lambda self: self.model)
    @rule(sink=st.sampled_from(SINKS))
    def dead_letter(self, sink):
        batch = self.spool.pending(sink, 1)
        self.spool.dead_letter(sink, [(p, "refused") for p in batch], SINKS)
        self.dead = min(self.dead + len(batch), MAX)  # dead letters are bounded like the spool
        for fid, done in self.model:
            if batch and fid == batch[0].finding_id:
                done.add(sink)
        self._settle()

    @invariant()
    def agrees(self):
        assert self.spool.counts() == SpoolCounts(len(self.model), self.dead, self.dropped)
        for sink in SINKS:
            expected = [fid for fid, done in self.model if sink not in done]
            assert [p.finding_id for p in self.spool.pending(sink, 100)] == expected
            assert self.spool.pending_for(sink) == len(expected)

    def teardown(self):
        self.spool.close()
        self.folder.cleanup()


TestSpoolModel = SpoolModel.TestCase
TestSpoolModel.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
