"""What a round sends (report = changes | all, heartbeats), as pure functions under
hypothesis; and a round itself on loopback: targets at once up to the bound, the cloud read once
for the round with every address, one target's failure its own, SIGTERM's stop honoured."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import types
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailpath.agent import diagnose as pipeline
from mailpath.agent.daemon import rounds
from mailpath.agent.daemon.config import AgentConfig
from mailpath.agent.daemon.rounds import (
    Sent,
    dump_state,
    finding_key,
    load_state,
    port_facts,
    prune,
    select,
    signature,
)
from mailpath.agent.diagnose import agent_info
from mailpath.agent.finding import Finding

CAUSES = ["none", "firewall", "service", "tls", "network"]
VERDICTS = ["open", "refused", "filtered", "rejected"]


def finding(
    target="mx.example.test", port=25, cause="none", verdicts=(("198.18.3.2", "open"),), hop=None, **kw
):
    location = None if cause == "none" else {"kind": "hop" if hop else "destination", "hop": hop}
    return {
        "id": str(uuid.uuid4()),
        "target": target,
        "domain": kw.get("domain"),
        "port": port,
        "cause": cause,
        "location": location,
        "addresses": [{"address": a, "verdict": v} for a, v in verdicts],
        "headline": kw.get("headline", f"{port} on {target}: {cause}"),
        "evidence": kw.get("evidence", []),
    }


# -- signatures and keys -------------------------------------------------------------------------


def test_the_signature_is_cause_location_and_verdicts_only():
    a = finding(cause="firewall", hop=2, verdicts=[("198.18.3.2", "filtered"), ("2001:db8:3::2", "filtered")])
    b = dict(a, id="other", headline="said otherwise", evidence=[{"fact": "x"}])
    b["addresses"] = list(reversed(a["addresses"]))  # DNS gave them in another order
    assert signature(a) == signature(b)
    assert signature(a) != signature(finding(cause="service", hop=2, verdicts=[("198.18.3.2", "filtered")]))
    assert signature(a) != signature(dict(a, location={"kind": "hop", "hop": 1}))
    assert signature(a) != signature(dict(a, addresses=[{"address": "198.18.3.2", "verdict": "rejected"}]))


def test_the_key_is_domain_target_and_port():
    assert finding_key(finding(port=25)) != finding_key(finding(port=587))
    assert finding_key(finding(domain="a.test")) != finding_key(finding(domain="b.test"))
    assert finding_key(finding(cause="tls")) == finding_key(finding(cause="none"))


# -- select --------------------------------------------------------------------------------------

observations = st.lists(
    st.tuples(
        st.sampled_from(["a.test", "b.test"]),
        st.sampled_from([25, 587]),
        st.sampled_from(CAUSES),
        st.sampled_from(VERDICTS),
    ),
    max_size=4,
    unique_by=lambda o: (o[0], o[1]),  # a round has one finding per target and port
)


@settings(max_examples=300, deadline=None)
@given(
    rounds_=st.lists(st.tuples(st.floats(1, 400), observations), max_size=25),
    heartbeat=st.floats(1, 2000),
    slack=st.floats(0, 300),
)
def test_changes_every_change_is_sent_and_nothing_else_but_heartbeats(rounds_, heartbeat, slack):
    state: dict[str, Sent] = {}
    now = 1_000_000.0
    seen: dict[str, list[str]] = {}  # key -> signatures observed, round by round
    sent: dict[str, list[tuple[str, str, float]]] = {}  # key -> (signature, why, when)
    for gap, obs in rounds_:
        now += gap
        found = [finding(t, p, c, [("198.18.3.2", v)]) for t, p, c, v in obs]
        before = dict(state)
        decisions, state = select(found, state, report="changes", now=now, heartbeat=heartbeat, slack=slack)
        assert [d.finding for d in decisions] == [f for f in found if f in [d.finding for d in decisions]]
        for f in found:
            seen.setdefault(finding_key(f), []).append(signature(f))
        for d in decisions:
            key, sig = finding_key(d.finding), signature(d.finding)
            last = before.get(key)
            if d.why == "new":
                assert last is None
            elif d.why == "changed":
                assert last is not None and last.signature != sig
            else:
                assert d.why == "heartbeat" and last.signature == sig and now - last.at >= heartbeat - slack
            sent.setdefault(key, []).append((sig, d.why, now))
        for f in found:  # what was not sent needed not be
            if not any(d.finding is f for d in decisions):
                last = state[finding_key(f)]
                assert last.signature == signature(f)
    for key, sigs in seen.items():  # every change reached the spool, in order
        assert _runs(sigs) == _runs([s for s, _, _ in sent[key]])


def _runs(items: list[str]) -> list[str]:
    return [x for i, x in enumerate(items) if i == 0 or items[i - 1] != x]


@given(n=st.integers(0, 20), heartbeat=st.floats(1, 1000))
def test_all_sends_everything_every_round(n, heartbeat):
    found = [finding(port=1000 + i) for i in range(n)]
    state: dict = {}
    for now in (0.0, 1.0, 2.0):
        decisions, state = select(found, state, report="all", now=now, heartbeat=heartbeat)
        assert [d.finding for d in decisions] == found and {d.why for d in decisions} <= {"all"}


def test_a_heartbeat_when_the_last_sent_is_heartbeat_minus_slack_old():
    f = finding()
    decisions, state = select([f], {}, report="changes", now=0, heartbeat=600, slack=150)
    assert [d.why for d in decisions] == ["new"]
    for now, expected in ((300, []), (449, []), (450, ["heartbeat"]), (700, []), (900, ["heartbeat"])):
        decisions, state = select([finding()], state, report="changes", now=now, heartbeat=600, slack=150)
        assert [d.why for d in decisions] == expected, now


def test_a_restart_resends_nothing_unchanged():
    state = select([finding()], {}, report="changes", now=0, heartbeat=600)[1]
    reloaded = load_state(dump_state(state))
    assert reloaded == state
    assert select([finding()], reloaded, report="changes", now=10, heartbeat=600)[0] == []


@given(st.dictionaries(st.text(max_size=20), st.tuples(st.text(max_size=30), st.floats(0, 2e9))))
def test_the_state_survives_its_json(raw):
    state = {k: Sent(s, t) for k, (s, t) in raw.items()}
    assert load_state(dump_state(state)) == state


@pytest.mark.parametrize("text", [None, "", "not json", "[1, 2]", '{"k": 5}', '{"k": ["s"]}'])
def test_an_unreadable_state_is_an_empty_one(text):
    assert load_state(text) == {}


def test_prune_lets_go_of_keys_no_longer_sent():
    state = {"old": Sent("x", 0.0), "fresh": Sent("y", 900.0)}
    assert prune(state, 1000.0, 500.0) == {"fresh": Sent("y", 900.0)}


# -- what the metrics take from a finding --------------------------------------------------------


def test_port_facts_take_the_fastest_answer_and_the_earliest_certificate():
    f = Finding.model_validate(
        {
            "agent": {"hostname": "h", "version": "0"},
            "target": "mx.test",
            "port": 465,
            "cause": "tls",
            "headline": "x",
            "severity": "error",
            "addresses": [
                {"address": "198.18.3.2", "verdict": "open"},
                {"address": "2001:db8:3::2", "verdict": "open"},
                {"address": "198.18.3.3", "verdict": "filtered"},
            ],
        }
    )

    def obs(rtt_ms, verdict, not_after=None):
        tls = {"certificate": {"not_after": not_after}} if not_after else None
        return types.SimpleNamespace(
            probe=types.SimpleNamespace(rtt_ms=rtt_ms, verdict=verdict),
            smtp=types.SimpleNamespace(tls=tls) if verdict == "open" else None,
        )

    soon, later = dt.datetime(2030, 1, 1, tzinfo=dt.UTC), dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
    o = {
        ("mx.test", "198.18.3.2", 465): obs(4.0, "open", later.isoformat()),
        ("mx.test", "2001:db8:3::2", 465): obs(2.5, "open", soon.isoformat()),
        ("mx.test", "198.18.3.3", 465): obs(None, "filtered"),
    }
    facts = port_facts(f, o)
    assert (facts.host, facts.port, facts.cause) == ("mx.test", 465, "tls")
    assert facts.verdicts == {"open": 2, "filtered": 1}
    assert facts.rtt == 0.0025 and facts.cert_not_after == soon.timestamp()
    none = port_facts(f, {})
    assert none.rtt is None and none.cert_not_after is None


# -- a round, on loopback --------------------------------------------------------------------------


def closed_ports(n: int) -> list[int]:
    socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(n)]
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def config(targets: list[dict], **kw) -> AgentConfig:
    return AgentConfig(
        targets=targets,
        probe={"method": "connect", "timeout": 0.3, "retries": 0, "min_wait": 0, "smtp_timeout": 1},
        stdout={"enabled": True},
        **kw,
    )


def test_a_round_reads_the_cloud_once_with_every_address_and_bounds_its_targets(monkeypatch):
    """Four targets (127.0.0.1 ... 127.0.0.4), two at a time; the cloud read once."""
    reads, running, peak = [], [0], [0]
    real_measure = pipeline.measure

    def fake_read(options, addresses):
        reads.append(list(addresses))
        return None

    async def counting_measure(plans, opts, cloud=None, recorder=None):
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        try:
            await asyncio.sleep(0.05)
            return await real_measure(plans, opts, cloud, recorder)
        finally:
            running[0] -= 1

    monkeypatch.setattr("mailpath.cloud.check.read_cloud", fake_read)
    monkeypatch.setattr("mailpath.agent.diagnose.measure", counting_measure)
    port = closed_ports(1)[0]
    c = config([{"target": f"127.0.0.{i}", "ports": [port]} for i in range(1, 5)], concurrency=2)
    done = []
    rnd, results = asyncio.run(rounds.run_round(c, 7, agent=agent_info("edge"), on_result=done.append))
    assert reads == [["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]]
    assert peak[0] == 2
    assert len(done) == 4 and done == results
    assert (rnd.number, rnd.targets, rnd.diagnosed, rnd.findings, rnd.problems) == (7, 4, 4, 4, 4)
    assert {r.findings[0].agent.hostname for r in results} == {"edge"}
    assert all(r.findings[0].cause == "service" and r.facts[0].verdicts == {"refused": 1} for r in results)
    assert rnd.errors == [] and not rnd.interrupted and rnd.cloud is None


def test_the_cloud_check_off_reads_nothing(monkeypatch):
    monkeypatch.setattr("mailpath.cloud.check.read_cloud", lambda *a: pytest.fail("read"))
    c = config([{"target": "127.0.0.1", "ports": closed_ports(1)}], cloud={"check": "off"})
    rnd, _ = asyncio.run(rounds.run_round(c, 1, agent=agent_info("edge")))
    assert rnd.diagnosed == 1


def test_a_required_cloud_that_fails_is_in_the_identity_and_the_round(monkeypatch):
    from mailpath.probes.errors import CannotRun

    def fail(options, addresses):
        raise CannotRun("no EC2 instance metadata here")

    monkeypatch.setattr("mailpath.cloud.check.read_cloud", fail)
    c = config([{"target": "127.0.0.1", "ports": closed_ports(1)}], cloud={"check": "on"})
    rnd, (r,) = asyncio.run(rounds.run_round(c, 1, agent=agent_info("edge")))
    assert rnd.cloud == "cloud check failed: no EC2 instance metadata here"
    assert r.findings[0].agent.cloud == {"error": rnd.cloud}


def test_one_target_failing_is_its_own_error(monkeypatch):
    real = pipeline.measure

    async def measure(plans, opts, cloud=None, recorder=None):
        if plans[0].host == "127.0.0.2":
            raise PermissionError("raw sockets need CAP_NET_RAW")
        return await real(plans, opts, cloud, recorder)

    monkeypatch.setattr("mailpath.agent.diagnose.measure", measure)
    port = closed_ports(1)[0]
    c = config([{"target": "127.0.0.1", "ports": [port]}, {"target": "127.0.0.2", "ports": [port]}])
    rnd, _ = asyncio.run(rounds.run_round(c, 1, agent=agent_info("edge"), stop=None))
    assert rnd.diagnosed == 1 and rnd.errors == ["127.0.0.2: raw sockets need CAP_NET_RAW"]
    assert "1 failed" in rnd.line()


def test_a_stop_before_the_round_starts_no_target():
    stop = asyncio.Event()
    stop.set()
    c = config([{"target": "127.0.0.1", "ports": closed_ports(1)}])
    rnd, results = asyncio.run(rounds.run_round(c, 1, agent=agent_info("edge"), stop=stop))
    assert results == [] and rnd.interrupted and rnd.diagnosed == 0
