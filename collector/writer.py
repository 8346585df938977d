"""SQLite's one writer, shared by the batches that wait for it (group commit).

SQLite takes one write transaction at a time, and each commit costs about as much as storing
a batch (the WAL's write, and now and then a checkpoint). So batches that arrive while a
transaction runs do not each wait for a transaction of their own: they queue here, in the
event loop (in order, holding no thread), and go together into the next one, each in its own
savepoint. A batch that fails is rolled back alone and its request gets its error; the others
are committed. A failed commit is every batch's error. PostgreSQL, with many writers at once
and replicas, stores each batch in its own transaction instead (see ``api.post_findings``).
"""

from __future__ import annotations

import asyncio
from collections import deque

from fastapi.concurrency import run_in_threadpool
from mailpath.agent.finding import Finding
from mailpath.collector import ingest
from mailpath.collector.db import write_session
from sqlalchemy import Engine

MOST = 2000  # findings per transaction: a group never waits long behind a huge one


class GroupWriter:
    def __init__(self, engine: Engine, most: int = MOST) -> None:
        self.engine, self.most = engine, most
        self._queue: deque[tuple[str, list[Finding], asyncio.Future[int]]] = deque()
        self._task: asyncio.Task | None = None

    async def store(self, agent: str, findings: list[Finding]) -> int:
        """Store a validated batch under ``agent``; how many findings were new."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((agent, findings, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="mailpath-writer")
        return await future

    async def _drain(self) -> None:
        group: list = []
        try:
            while self._queue:
                group = [self._queue.popleft()]
                size = len(group[0][1])
                while self._queue and size + len(self._queue[0][1]) <= self.most:
                    group.append(self._queue.popleft())
                    size += len(group[-1][1])
                try:
                    results = await run_in_threadpool(store_group, self.engine, [(a, f) for a, f, _ in group])
                except Exception as e:  # the commit failed
                    results = [e] * len(group)
                for (*_, future), result in zip(group, results, strict=True):
                    if future.done():  # its request went away: the findings are stored all the same
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
                group = []
        finally:  # and when cancelled (the collector stopping), nobody waits for ever
            self._task = None
            for *_, future in [*group, *self._queue]:
                if not future.done():
                    future.set_exception(RuntimeError("the collector is stopping"))
            self._queue.clear()


def store_group(engine: Engine, batches: list[tuple[str, list[Finding]]]) -> list[int | Exception]:
    """One write transaction for several agents' batches, each in a savepoint: per batch, how
    many findings were new, or the error that rolled that batch back."""
    out: list[int | Exception] = []
    with write_session(engine) as session:
        for agent, findings in batches:
            try:
                with session.begin_nested():
                    out.append(ingest.store(session, agent, findings))
            except Exception as e:
                out.append(e)
    return out
