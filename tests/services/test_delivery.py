"""Delivery from the spool to the project's own collector, started as a real process, with a
fault-injecting proxy in front of it where a fault must be made (:mod:`tests.services.faultproxy`):
the collector down for a while then up, 500s, 429 with Retry-After, answers slower than the
timeout, the delivering process killed with SIGKILL mid-delivery, the spool's disk full, the
bound. In every case the collector ends with exactly the findings produced, less those counted
as dropped, each once (read back through its API, by id). Also: the OTLP/HTTP logs sink against
a receiver that decodes the protobuf, and all the sinks together.

Everything listens on 127.0.0.1 only; every process started here is stopped by its pid."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from mailpath.agent.daemon.delivery import (
    CollectorSettings,
    Delivery,
    DeliverySettings,
    OtlpSettings,
    StdoutSettings,
    make_sinks,
)
from mailpath.agent.daemon.sinks import StdoutSink
from mailpath.agent.daemon.spool import Spool, SpoolFull

from tests.services.conftest import Collector, clean_env, finding, pages
from tests.services.faultproxy import Fault, FaultProxy
from tests.services.otlpreceiver import Receiver

ROOT = Path(__file__).resolve().parents[2]
QUICK = DeliverySettings(batch_size=50, timeout=5, backoff_base=0.02, backoff_cap=0.2, retry_attempts=8)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A collector for this module, on SQLite (the fault tests are about the agent's side)."""
    c = Collector(tmp_path_factory.mktemp("collector"))
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture
def proxy(server):
    with FaultProxy(server.url) as p:
        yield p


class Agent:
    """One agent of a test: its name, token file, spool, and what it produced."""

    def __init__(self, server: Collector, name: str, folder: Path, **bounds) -> None:
        self.server, self.name = server, name
        self.token = server.token(name)
        self.token_file = folder / "token"
        self.token_file.write_text(self.token + "\n")
        self.spool_path = folder / "spool.db"
        self.spool = Spool(self.spool_path, **({"max_count": 100_000, "max_age": 86_400} | bounds))
        self.produced: list[str] = []

    def produce(self, n: int, **kw) -> list[dict]:
        docs = [finding(target=f"{self.name}-{len(self.produced) + i}.example.test", **kw) for i in range(n)]
        self.spool.add(docs)
        self.produced += [d["id"] for d in docs]
        return docs

    def delivery(self, url: str, settings: DeliverySettings = QUICK, events=None, **sinks) -> Delivery:
        collector = CollectorSettings(url=url, token_file=self.token_file)
        return Delivery(
            self.spool, make_sinks(collector, sinks.get("otlp"), sinks.get("stdout")), settings, events
        )

    def stored(self) -> list[str]:
        """The ids of this agent's findings in the collector, as its API lists them."""
        with self.server.client(self.token) as c:
            return [item["id"] for item in pages(c, "/v1/findings", agent=self.name, limit=1000)]

    def assert_exactly(self, expected: list[str]) -> None:
        stored = self.stored()
        twice = [i for i, n in Counter(stored).items() if n > 1]
        assert not twice, f"stored twice: {twice}"
        assert sorted(stored) == sorted(expected)


@pytest.fixture
def agent(server, name, tmp_path):
    a = Agent(server, name, tmp_path)
    yield a
    a.spool.close()


class Events:
    """What the delivery told (the Events protocol)."""

    def __init__(self) -> None:
        self.retries: list[tuple[str, str]] = []
        self.delivered_n = self.dead_n = self.dropped_n = 0

    def delivered(self, sink, n):
        self.delivered_n += n

    def retried(self, sink, reason):
        self.retries.append((sink, reason))

    def dead(self, sink, n):
        self.dead_n += n

    def dropped(self, n):
        self.dropped_n += n


def run_until_empty(delivery: Delivery, spool: Spool, during=None, timeout: float = 30) -> None:
    """Delivery.run() until the spool is empty (``during``: a coroutine run beside it)."""

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(delivery.run(stop))
        try:
            if during is not None:
                await during()
            deadline = time.monotonic() + timeout
            while spool.counts().pending and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await delivery.aclose()

    asyncio.run(main())


# -- the collector, as it is ---------------------------------------------------------------


def test_every_finding_arrives_once_and_a_bad_one_is_dead_lettered(agent, server):
    docs = agent.produce(120)
    bad = dict(docs[57], id=str(uuid.uuid4()), port=0)  # valid for the spool, not for the collector
    agent.spool.add([bad])
    report = asyncio.run(agent.delivery(server.url).flush())
    assert report.complete and report.delivered == {"collector": 120} and report.dead == {"collector": 1}
    agent.assert_exactly(agent.produced)
    (letter,) = agent.spool.dead_letters()
    assert letter.finding_id == bad["id"] and letter.sink == "collector" and letter.finding == bad
    assert letter.reason.startswith("422 schema-violation") and "port" in letter.reason
    assert agent.spool.counts().pending == 0


def test_a_rejected_token_holds_findings_until_a_new_token_is_read(agent, server, caplog):
    agent.produce(30)
    agent.token_file.write_text("not-a-valid-token-at-all\n")
    events = Events()
    delivery = agent.delivery(server.url, QUICK.model_copy(update={"backoff_cap": 0.1}), events)

    async def rotate():
        for _ in range(200):
            if len(events.retries) >= 2:
                break
            await asyncio.sleep(0.02)
        assert agent.spool.counts().pending == 30 and agent.spool.counts().dead == 0
        agent.token_file.write_text(agent.token + "\n")  # the token is rotated in place

    with caplog.at_level(logging.INFO):
        run_until_empty(delivery, agent.spool, rotate)
    assert {r for _, r in events.retries} == {"http-401"}
    agent.assert_exactly(agent.produced)
    assert agent.spool.counts().dead == 0
    assert "401" in caplog.text and agent.token not in caplog.text and "not-a-valid-token" not in caplog.text


def test_a_batch_over_the_body_limit_is_split(tmp_path, name):
    (tmp_path / "c").mkdir()
    small = Collector(tmp_path / "c", body_limit="4096").start()  # a finding is about 600 bytes
    try:
        a = Agent(small, name, tmp_path)
        a.produce(40)
        report = asyncio.run(a.delivery(small.url, QUICK.model_copy(update={"batch_size": 40})).flush())
        assert report.complete and report.delivered == {"collector": 40} and not report.dead
        a.assert_exactly(a.produced)
        big = dict(finding(target=name), headline="x" * 5000)  # too large alone: dead-lettered
        a.spool.add([big])
        report = asyncio.run(a.delivery(small.url).flush())
        (letter,) = a.spool.dead_letters()
        assert letter.finding_id == big["id"] and letter.reason.startswith("413 too-large")
        a.spool.close()
    finally:
        small.stop()


# -- faults --------------------------------------------------------------------------------


def test_collector_down_for_a_while_then_up(tmp_path, name):
    (tmp_path / "c").mkdir()
    collector = Collector(tmp_path / "c").start()
    try:
        with FaultProxy(collector.url) as proxy:
            a = Agent(collector, name, tmp_path)
            a.produce(150)
            collector.stop()
            proxy.refuse()  # nothing listens at the collector's address
            events = Events()
            delivery = a.delivery(proxy.url, QUICK, events)

            async def outage():
                await asyncio.sleep(1.5)
                assert a.spool.counts().pending == 150
                collector.url = ""  # start() waits for the new one
                await asyncio.to_thread(collector.start)  # the same database, a new port
                proxy.upstream = collector.url
                proxy.listen()

            run_until_empty(delivery, a.spool, outage)
            assert len(events.retries) >= 3 and {r for _, r in events.retries} <= {"connect", "transport"}
            a.assert_exactly(a.produced)
            a.spool.close()
    finally:
        collector.stop()


def test_500s_are_retried(agent, proxy):
    agent.produce(100)
    proxy.plan(Fault("status", status=500), Fault("status", status=502), Fault("status", status=503))
    events = Events()
    report = asyncio.run(agent.delivery(proxy.url, QUICK, events).flush())
    assert report.complete and report.retries == {"collector": 3}
    assert [r for _, r in events.retries] == ["http-500", "http-502", "http-503"]
    assert len(proxy.answered(200)) == 2
    agent.assert_exactly(agent.produced)


def test_429_retry_after_is_honoured(agent, proxy):
    agent.produce(10)
    proxy.plan(Fault("status", status=429, retry_after=1.5))
    asyncio.run(agent.delivery(proxy.url, QUICK).flush())  # the backoff alone: at most 0.2 s
    first, second = proxy.seen[:2]
    assert first.status == 429 and second.status == 200
    assert second.at - first.at >= 1.5
    agent.assert_exactly(agent.produced)


def test_answers_slower_than_the_timeout(agent, proxy):
    agent.produce(100)
    # the collector stores the first batch, its answer comes after the agent stopped waiting
    proxy.plan(Fault("delay", seconds=1.5, after_upstream=True), Fault("close", after_upstream=True))
    settings = QUICK.model_copy(update={"timeout": 0.5})
    events = Events()
    report = asyncio.run(agent.delivery(proxy.url, settings, events).flush())
    assert report.complete
    assert [r for _, r in events.retries][:2] == ["timeout", "transport"]  # (a loaded machine: more)
    sent = Counter(i for s in proxy.seen for i in s.ids)
    assert min(sent[i] for i in proxy.seen[0].ids) >= 3  # the first batch went three times...
    agent.assert_exactly(agent.produced)  # ...and is stored once


def test_killed_mid_delivery_and_started_again(agent, proxy):
    agent.produce(300)
    agent.spool.close()
    # batch 1 passes; batch 2 reaches the collector, its answer is held: the kill lands there
    proxy.plan(Fault(), Fault("hold"))
    cmd = [sys.executable, "-m", "tests.services.delivery_worker"]
    args = [str(agent.spool_path), proxy.url, str(agent.token_file), "--batch-size", "100"]
    env = clean_env()
    worker = subprocess.Popen([*cmd, "run", *args], cwd=ROOT, env=env, stderr=subprocess.PIPE)
    try:
        assert proxy.held.wait(30), "the second batch never came"
        assert len(agent.stored()) == 200  # the collector has batch 2, the agent does not know
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        proxy.release()
    assert worker.returncode == -signal.SIGKILL
    with Spool(agent.spool_path, max_count=100_000, max_age=86_400) as s:
        assert s.check() == "ok" and s.counts().pending == 200  # batch 2 is still spooled
    again = subprocess.run(
        [*cmd, "once", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    assert '"delivered": {"collector": 200}' in again.stdout
    agent.spool = Spool(agent.spool_path, max_count=100_000, max_age=86_400)
    assert agent.spool.counts().pending == 0
    sent = Counter(i for seen in proxy.seen for i in seen.ids)
    assert sorted(Counter(sent.values()).items()) == [(1, 200), (2, 100)]  # batch 2 went twice...
    agent.assert_exactly(agent.produced)  # ...and is stored once


def test_killed_while_spooling_loses_nothing_it_was_told_was_spooled(tmp_path):
    path = tmp_path / "spool.db"
    cmd = [sys.executable, "-m", "tests.services.delivery_worker", "produce", str(path), "100000"]
    producer = subprocess.Popen(cmd, cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, text=True)
    told = []
    try:
        for line in producer.stdout:  # type: ignore[union-attr]
            told.append(line.strip())
            if len(told) == 150:
                break
    finally:
        producer.send_signal(signal.SIGKILL)  # in the middle of the next add()
        producer.wait(10)
    told += [line.strip() for line in producer.stdout if line.strip()]  # type: ignore[union-attr]
    with Spool(path, max_count=100_000, max_age=86_400) as s:
        assert s.check() == "ok"
        spooled = {p.finding_id for p in s.pending("collector", 1_000_000)}
    assert set(told) <= spooled and len(spooled) - len(told) <= 1  # at most the add under way


def test_the_bound_drops_the_oldest_while_the_collector_fails(tmp_path, name, server, proxy):
    a = Agent(server, name, tmp_path, max_count=40)
    events = Events()
    delivery = a.delivery(proxy.url, QUICK, events)
    proxy.default = Fault("status", status=503)
    for _ in range(10):
        a.produce(10)
        asyncio.run(delivery.flush(deadline=time.monotonic() + 0.2))
    assert a.spool.counts().pending == 40 and a.spool.counts().dropped == 60 and events.dropped_n == 60
    proxy.default = Fault()
    assert asyncio.run(delivery.flush()).complete
    a.assert_exactly(a.produced[60:])  # produced, less the dropped: the oldest went first
    a.spool.close()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs mounted for the test (root only), unmounted afterwards even on failure."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_the_spools_disk_full(tiny_disk, server, name, tmp_path):
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * (1536 * 1024))  # leaves about half a megabyte
    a = Agent(server, name, tiny_disk)
    refused = 0
    for _ in range(200):
        try:
            a.produce(20)
        except SpoolFull as e:
            assert "disk is full" in str(e) and "counted as dropped" in str(e)
            refused += 20
            if refused >= 60:
                break
    assert refused == 60 and len(a.produced) > 0
    counts = a.spool.counts()
    assert counts.dropped == 60 and counts.pending == len(a.produced)
    assert a.spool.check() == "ok"
    # delivery goes on; recording the acks may need room the disk has not: then they go again
    report = asyncio.run(a.delivery(server.url).flush())
    if report.failed:  # the collector has the first batch; the spool could not record it
        assert "disk is full" in report.failed["collector"]
        assert a.spool.counts().pending == len(a.produced) and len(a.stored()) == QUICK.batch_size
    else:
        assert report.delivered == {"collector": len(a.produced)}
    assert a.spool.check() == "ok"
    filler.unlink()  # room again
    report = asyncio.run(a.delivery(server.url).flush())
    assert report.complete and a.spool.counts().pending == 0
    a.assert_exactly(a.produced)  # produced (accepted by add) = stored; the refused were counted
    a.produce(5)  # the spool works again
    assert a.spool.counts() == counts.__class__(pending=5, dead=0, dropped=60)
    a.spool.close()


# -- the other sinks -----------------------------------------------------------------------


def test_otlp_sink_sends_log_events_a_receiver_decodes(agent, caplog):
    with Receiver() as receiver:
        docs = agent.produce(30, cause="firewall", severity="error")
        settings = OtlpSettings(endpoint=receiver.url, headers={"x-team": "mail"}, resource={"env": "test"})
        delivery = Delivery(agent.spool, make_sinks(None, settings, None), QUICK)
        receiver.statuses.extend([(503, 0.3), (429, None)])
        report = asyncio.run(delivery.flush())
        assert report.complete and report.delivered == {"otlp": 30} and report.retries == {"otlp": 2}
        records = {r.attributes["mailpath.finding.id"]: r for r in receiver.records}
        assert sorted(records) == sorted(d["id"] for d in docs)
        for d in docs:
            r = records[d["id"]]
            assert r.finding == d and r.event_name == "mailpath.finding"
            assert (r.severity_number, r.severity_text) == (17, "ERROR")
            assert r.attributes["server.address"] == d["target"] and r.attributes["server.port"] == 25
            assert r.attributes["mailpath.cause"] == "firewall"
            assert r.attributes["mailpath.verdicts"] == ["filtered"]
            assert (
                r.attributes["mailpath.location.kind"] == "hop" and r.attributes["mailpath.location.hop"] == 2
            )
            assert r.resource["service.name"] == "mailpath-agent" and r.resource["env"] == "test"
            assert r.resource["host.name"] == "agent-host" and r.scope == "mailpath.agent"
        delivered_headers = receiver.requests[-1]
        assert delivered_headers["Content-Encoding"] == "gzip" and delivered_headers["x-team"] == "mail"

        # a record the receiver refuses (400, no index): isolated by splitting, dead-lettered
        poison = agent.produce(9)[4]
        receiver.poison = poison["target"]
        report = asyncio.run(delivery.flush())
        (letter,) = agent.spool.dead_letters()
        assert letter.finding_id == poison["id"] and letter.sink == "otlp"
        assert letter.reason == "400: a record is poisoned"
        assert report.delivered == {"otlp": 8} and agent.spool.counts().pending == 0

        # a partial success counts as delivered (OTLP: not to be sent again), and is logged
        receiver.reject = 1
        agent.produce(3)
        with caplog.at_level(logging.WARNING):
            assert asyncio.run(delivery.flush()).delivered == {"otlp": 3}
        assert "rejected 1 record" in caplog.text


def test_every_sink_at_once_and_a_finding_leaves_when_the_last_has_it(agent, server, proxy, capsys):
    with Receiver() as receiver:
        docs = agent.produce(20)
        otlp = OtlpSettings(endpoint=receiver.url)
        receiver.statuses.extend([(503, None)] * 100)  # the OTLP receiver is down for now
        delivery = agent.delivery(proxy.url, QUICK.model_copy(update={"retry_attempts": 2}), otlp=otlp,
                                  stdout=StdoutSettings(enabled=True))  # fmt: skip
        report = asyncio.run(delivery.flush())
        assert report.delivered == {"collector": 20, "stdout": 20} and "otlp" in report.failed
        assert agent.spool.counts().pending == 20  # kept for the OTLP receiver
        agent.assert_exactly(agent.produced)
        receiver.statuses.clear()
        report = asyncio.run(delivery.flush())
        assert report.delivered == {"otlp": 20} and agent.spool.counts().pending == 0
        assert sorted(r.finding["id"] for r in receiver.records) == sorted(agent.produced)
        agent.assert_exactly(agent.produced)  # the collector got nothing twice
        lines = capsys.readouterr().out.splitlines()
        assert [line for line in lines if line.startswith("{")] == [
            json.dumps(d, separators=(",", ":")) for d in docs
        ]


def test_stdout_sink_is_acked_once_written(agent):
    out = io.StringIO()
    agent.produce(5)
    report = asyncio.run(Delivery(agent.spool, [StdoutSink(out)], QUICK).flush())
    assert report.delivered == {"stdout": 5} and len(out.getvalue().splitlines()) == 5
