"""Delivery over a real spool to scripted sinks (no network): retries and their waits, dead
letters, splitting, holds, several sinks, flush deadlines, run() and its stop; and the stdout
sink."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections import deque
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailpath.agent.daemon.delivery import Delivery, DeliverySettings
from mailpath.agent.daemon.outcome import Accepted, Hold, Outcome, Refused, Retry, TooLarge
from mailpath.agent.daemon.sinks import StdoutSink
from mailpath.agent.daemon.spool import Spool

FAST = DeliverySettings(
    batch_size=10, backoff_base=0.001, backoff_cap=0.01, retry_attempts=3, poll_interval=0.05
)


def findings(n: int) -> list[dict]:
    return [{"id": str(uuid.uuid4()), "n": i} for i in range(n)]


class Scripted:
    """A sink that answers from a script (then by ``rule``, then Accepted) and keeps what it took."""

    def __init__(self, name: str = "fake", script=(), rule=None, batch_size: int | None = None) -> None:
        self.name = name
        self.batch_size = batch_size
        self.script: deque = deque(script)
        self.rule = rule
        self.calls: list[list[str]] = []
        self.times: list[float] = []
        self.got: list[str] = []

    async def send(self, batch: list[dict], timeout: float) -> Outcome:
        self.calls.append([f["id"] for f in batch])
        self.times.append(time.monotonic())
        outcome = self.script.popleft() if self.script else (self.rule(batch) if self.rule else Accepted())
        if isinstance(outcome, Exception):
            raise outcome
        if isinstance(outcome, Accepted):
            self.got += [f["id"] for f in batch]
        return outcome

    async def aclose(self) -> None:
        pass


class Recorder:
    def __init__(self) -> None:
        self.log: list[tuple] = []

    def delivered(self, sink, n):
        self.log.append(("delivered", sink, n))

    def retried(self, sink, reason):
        self.log.append(("retried", sink, reason))

    def dead(self, sink, n):
        self.log.append(("dead", sink, n))

    def dropped(self, n):
        self.log.append(("dropped", n))


@pytest.fixture
def spool(tmp_path):
    s = Spool(tmp_path / "spool.db", max_count=10_000, max_age=3600)
    yield s
    s.close()


def test_everything_delivered_in_order_and_in_batches(spool):
    docs = findings(25)
    spool.add(docs)
    sink, events = Scripted(), Recorder()
    report = asyncio.run(Delivery(spool, [sink], FAST, events).flush())
    assert sink.got == [d["id"] for d in docs]
    assert [len(c) for c in sink.calls] == [10, 10, 5]
    assert report.delivered == {"fake": 25} and report.complete and report.pending == 0
    assert events.log == [("delivered", "fake", 10), ("delivered", "fake", 10), ("delivered", "fake", 5)]
    assert spool.counts().pending == 0


def test_transient_failures_are_retried_then_delivered(spool):
    spool.add(findings(3))
    sink = Scripted(script=[Retry("connect"), Retry("http-503"), Accepted()])
    events = Recorder()
    report = asyncio.run(Delivery(spool, [sink], FAST, events).flush())
    assert len(sink.calls) == 3 and sink.calls[0] == sink.calls[2]
    assert report.retries == {"fake": 2} and report.delivered == {"fake": 3}
    assert [e for e in events.log if e[0] == "retried"] == [
        ("retried", "fake", "connect"),
        ("retried", "fake", "http-503"),
    ]


def test_retries_run_out_in_a_flush_and_the_findings_stay(spool):
    spool.add(findings(15))
    sink = Scripted(rule=lambda b: Retry("http-500", "500 boom"))
    report = asyncio.run(Delivery(spool, [sink], FAST).flush())
    assert len(sink.calls) == FAST.retry_attempts  # the first batch only: the sink is down
    assert report.failed == {"fake": "500 boom"} and not report.complete
    assert spool.counts().pending == 15 and spool.counts().dead == 0


def test_retry_after_is_the_wait(spool):
    spool.add(findings(1))
    sink = Scripted(script=[Retry("http-429", retry_after=0.3)])
    asyncio.run(Delivery(spool, [sink], FAST).flush())
    assert sink.times[1] - sink.times[0] >= 0.3  # the backoff alone would be at most 0.01 s


def test_retry_after_is_capped(spool):
    spool.add(findings(1))
    sink = Scripted(script=[Retry("http-429", retry_after=3600)])
    s = FAST.model_copy(update={"retry_after_max": 0.2})
    start = time.monotonic()
    asyncio.run(Delivery(spool, [sink], s).flush())
    assert 0.2 <= sink.times[1] - sink.times[0] < 2 and time.monotonic() - start < 3


def test_a_refused_finding_is_dead_lettered_and_the_rest_sent_again(spool):
    docs = findings(6)
    spool.add(docs)
    bad = {docs[1]["id"], docs[4]["id"]}

    def collector(batch):  # like the collector: the first bad finding, by index
        for i, f in enumerate(batch):
            if f["id"] in bad:
                return Refused(i, f"422 schema-violation: finding {i}")
        return Accepted()

    sink, events = Scripted(rule=collector), Recorder()
    report = asyncio.run(Delivery(spool, [sink], FAST, events).flush())
    assert sink.got == [d["id"] for d in docs if d["id"] not in bad]
    assert len(sink.calls) == 3  # nothing of a refused batch was taken: the rest goes again
    assert {d.finding_id for d in spool.dead_letters()} == bad
    assert {d.reason for d in spool.dead_letters()} == {
        "422 schema-violation: finding 1",
        "422 schema-violation: finding 3",
    }
    assert report.dead == {"fake": 2} and report.delivered == {"fake": 4} and spool.counts().pending == 0
    assert ("dead", "fake", 1) in events.log


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 40), bad=st.sets(st.integers(0, 39), max_size=5), too_large=st.integers(1, 40))
def test_splitting_isolates_exactly_the_findings_at_fault(tmp_path_factory, size, bad, too_large):
    """Refusals that name no finding, and 413s, are split down to the finding at fault: every
    good finding is delivered once, in order, every bad one dead-lettered, nothing else."""
    folder = tmp_path_factory.mktemp("split", numbered=True)
    with Spool(Path(folder) / "s.db", max_count=1000, max_age=3600) as s:
        docs = findings(size)
        s.add(docs)
        bad_ids = {docs[i]["id"] for i in bad if i < size}

        def receiver(batch):
            if len(batch) > too_large:
                return TooLarge("413 too-large")
            if any(f["id"] in bad_ids for f in batch):
                return Refused(None, "400 bad-encoding")
            return Accepted()

        sink = Scripted(rule=receiver)
        report = asyncio.run(Delivery(s, [sink], FAST.model_copy(update={"batch_size": 40})).flush())
        assert sink.got == [d["id"] for d in docs if d["id"] not in bad_ids]
        assert sorted(d.finding_id for d in s.dead_letters(1000)) == sorted(bad_ids)
        assert report.complete and s.counts().pending == 0
        big = too_large < 2 and size > 0  # a finding alone over the limit: dead, as too large
        assert big or all(d.reason == "400 bad-encoding" for d in s.dead_letters(1000))


def test_a_hold_keeps_everything_and_waits_the_cap(spool):
    spool.add(findings(4))
    sink = Scripted(rule=lambda b: Hold("http-401", "401 invalid or revoked token"))
    s = FAST.model_copy(update={"backoff_cap": 0.1, "retry_attempts": 3})
    report = asyncio.run(Delivery(spool, [sink], s).flush())
    assert len(sink.calls) == 3 and sink.times[2] - sink.times[0] >= 0.2  # the cap each time
    assert spool.counts().pending == 4 and spool.counts().dead == 0  # nothing dead-lettered
    assert "401" in report.failed["fake"]


def test_a_sink_that_raises_is_retried_not_fatal(spool):
    spool.add(findings(2))
    sink = Scripted(script=[RuntimeError("a bug")])
    report = asyncio.run(Delivery(spool, [sink], FAST).flush())
    assert report.delivered == {"fake": 2} and report.retries == {"fake": 1}


def test_one_sink_down_holds_back_none_of_the_others(spool):
    docs = findings(12)
    spool.add(docs)
    up, down = Scripted("up"), Scripted("down", rule=lambda b: Retry("connect"))
    report = asyncio.run(Delivery(spool, [up, down], FAST).flush())
    assert up.got == [d["id"] for d in docs] and report.delivered == {"up": 12}
    assert spool.counts().pending == 12 and spool.pending_for("up") == 0  # kept for "down"
    down.rule = None
    report = asyncio.run(Delivery(spool, [up, down], FAST).flush())
    assert down.got == [d["id"] for d in docs] and len(up.got) == 12  # "up" got nothing twice
    assert spool.counts().pending == 0


def test_flush_stops_at_its_deadline(spool):
    spool.add(findings(5))
    sink = Scripted(rule=lambda b: Retry("http-503", retry_after=0.2))
    s = FAST.model_copy(update={"retry_attempts": 1000})
    start = time.monotonic()
    report = asyncio.run(Delivery(spool, [sink], s).flush(deadline=time.monotonic() + 0.5))
    assert time.monotonic() - start < 1.0 and 2 <= len(sink.calls) <= 4
    assert report.failed and spool.counts().pending == 5


def test_flush_delivers_only_what_was_there_when_it_began(spool):
    spool.add(findings(10))
    sink = Scripted()

    async def main():
        delivery = Delivery(spool, [sink], FAST)
        original = sink.send

        async def send_and_add(batch, timeout):
            spool.add(findings(10))  # a round spooling meanwhile
            return await original(batch, timeout)

        sink.send = send_and_add
        return await delivery.flush()

    report = asyncio.run(main())
    assert report.delivered == {"fake": 10} and report.pending == 10


def test_run_delivers_as_findings_come_and_stops(spool):
    sink, events = Scripted(), Recorder()

    async def main():
        stop = asyncio.Event()
        delivery = Delivery(spool, [sink], FAST.model_copy(update={"poll_interval": 30}), events)
        task = asyncio.create_task(delivery.run(stop))
        await asyncio.sleep(0.05)
        spool.add(findings(3))  # wakes the delivery: no waiting for the 30 s poll
        for _ in range(200):
            if len(sink.got) == 3:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 2)

    asyncio.run(main())
    assert len(sink.got) == 3 and spool.counts().pending == 0


def test_run_retries_without_end_and_stop_cuts_the_wait(spool):
    spool.add(findings(2))
    sink = Scripted(rule=lambda b: Retry("http-503", retry_after=60))

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(
            Delivery(spool, [sink], FAST.model_copy(update={"retry_after_max": 60})).run(stop)
        )
        await asyncio.sleep(0.2)
        stop.set()
        start = time.monotonic()
        await asyncio.wait_for(task, 5)
        return time.monotonic() - start

    assert asyncio.run(main()) < 1  # not the 60 s the receiver asked for
    assert len(sink.calls) == 1 and spool.counts().pending == 2


def test_run_keeps_trying_past_retry_attempts(spool):
    spool.add(findings(1))
    sink = Scripted(script=[Retry("connect")] * (FAST.retry_attempts + 3))

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(Delivery(spool, [sink], FAST).run(stop))
        for _ in range(300):
            if sink.got:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 2)

    asyncio.run(main())
    assert len(sink.calls) == FAST.retry_attempts + 4 and len(sink.got) == 1


def test_drops_by_the_bound_are_told(tmp_path):
    events = Recorder()
    with Spool(tmp_path / "s.db", max_count=3, max_age=3600) as s:
        Delivery(s, [Scripted()], FAST, events)
        s.add(findings(5))
    assert events.log == [("dropped", 2)]


def test_two_sinks_of_one_name_are_refused(spool):
    with pytest.raises(ValueError, match="name"):
        Delivery(spool, [Scripted("x"), Scripted("x")], FAST)


def test_stdout_sink_writes_one_line_per_finding():
    out = io.StringIO()
    docs = [{"id": "a", "target": "mx.example.test", "nested": {"x": [1, 2]}}, {"id": "b", "t": "é"}]
    assert asyncio.run(StdoutSink(out).send(docs, 1)) == Accepted()
    lines = out.getvalue().splitlines()
    assert [json.loads(line) for line in lines] == docs


def test_stdout_sink_on_a_closed_stream_is_a_retry():
    out = io.StringIO()
    out.close()
    outcome = asyncio.run(StdoutSink(out).send([{"id": "a"}], 1))
    assert isinstance(outcome, Retry) and outcome.reason == "write"
