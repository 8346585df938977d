"""The SQLite collector's group commit (``collector.writer``), on a real SQLite database:
batches that wait together go into one transaction, each in its own savepoint."""

from __future__ import annotations

import asyncio

import pytest
from mailpath.agent.finding import Finding
from mailpath.collector import ingest, migrate
from mailpath.collector.db import make_engine, read_session
from mailpath.collector.writer import GroupWriter
from sqlalchemy import event, text

from tests.services.conftest import finding


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/collector.db")
    migrate.upgrade(engine)
    commits: list[int] = []
    event.listen(engine, "commit", lambda _conn: commits.append(1))
    engine.commits = commits  # type: ignore[attr-defined]
    yield engine
    engine.dispose()


def _batch(n: int, target: str) -> list[Finding]:
    return [Finding.model_validate(finding(target, 25 + i % 2)) for i in range(n)]


def _stored(engine) -> dict[str, int]:
    with read_session(engine) as s:
        return dict(s.execute(text("SELECT agent, count(*) FROM findings GROUP BY agent")).all())


def test_batches_that_wait_together_are_committed_together_and_each_counted(engine):
    batches = {f"agent{i}": _batch(10, f"mx{i}.example.test") for i in range(30)}
    writer = GroupWriter(engine)

    async def main():
        first = await asyncio.gather(*(writer.store(a, b) for a, b in batches.items()))
        again = await asyncio.gather(*(writer.store(a, b) for a, b in batches.items()))  # retries
        return first, again

    before = len(engine.commits)
    first, again = asyncio.run(main())
    assert first == [10] * 30 and again == [0] * 30
    assert _stored(engine) == dict.fromkeys(batches, 10)
    assert len(engine.commits) - before <= 4  # 60 batches, a transaction per group, not per batch


def test_a_batch_that_fails_is_rolled_back_alone_and_its_request_gets_the_error(engine, monkeypatch):
    store = ingest.store

    def failing(session, agent, findings, now=None):
        n = store(session, agent, findings, now)  # its rows written, then the error: all undone
        if agent == "bad":
            raise ValueError("boom")
        return n

    monkeypatch.setattr(ingest, "store", failing)
    writer = GroupWriter(engine)
    names = ["a", "bad", "b", "c"]

    async def main():
        return await asyncio.gather(
            *(writer.store(n, _batch(5, f"{n}.example.test")) for n in names), return_exceptions=True
        )

    results = asyncio.run(main())
    assert results[0] == results[2] == results[3] == 5
    assert isinstance(results[1], ValueError)
    assert _stored(engine) == {"a": 5, "b": 5, "c": 5}
    with read_session(engine) as s:
        assert s.execute(text("SELECT count(*) FROM agents WHERE name = 'bad'")).scalar() == 0


def test_a_group_is_bounded_in_findings(engine):
    writer = GroupWriter(engine, most=25)

    async def main():
        return await asyncio.gather(
            *(writer.store(f"g{i}", _batch(10, f"g{i}.example.test")) for i in range(6))
        )

    before = len(engine.commits)
    assert asyncio.run(main()) == [10] * 6
    assert len(engine.commits) - before == 3  # two batches of 10 per transaction of at most 25


def test_a_failed_commit_is_every_batchs_error_and_the_writer_goes_on(engine, monkeypatch):
    from mailpath.collector import writer as module

    writer = GroupWriter(engine)
    real = module.store_group

    def broken(engine, batches):
        raise OSError("disk full")

    async def main():
        monkeypatch.setattr(module, "store_group", broken)
        failed = await asyncio.gather(
            *(writer.store(f"x{i}", _batch(2, "x.example.test")) for i in range(3)), return_exceptions=True
        )
        monkeypatch.setattr(module, "store_group", real)
        return failed, await writer.store("y", _batch(2, "y.example.test"))

    failed, later = asyncio.run(main())
    assert all(isinstance(e, OSError) for e in failed) and later == 2
