"""50 agents posting overlapping batches at once, on SQLite and on PostgreSQL: every finding is
stored exactly once, the ``new`` counts add up to the findings there are, and each target's
latest state is its newest finding.

The load (bounded: about 700 requests, two minutes at most): each agent has its own findings
over 3 targets x 2 ports, each with its own created_at, sent in batches of 10 that overlap by 5;
a batch also carries 2 findings of the next agent (the same ids from two agents); every batch
is sent twice at the same moment (the copies shuffled differently, so two transactions take
the same ids in other orders). Round 1 has no timeouts: the ``new`` of every answer is known,
and they add up to the findings sent. In round 2 one send of each batch gives up after 5 ms of
waiting for the answer (the collector still stores it) and is sent again: the number the
collector counts as new (its metric) still adds up, and nothing is stored twice. Checked
through the API and directly in the database."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections import Counter, defaultdict

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from tests.services.conftest import finding, pages

AGENTS = 50
KEYS = [(t, p) for t in range(3) for p in (25, 587)]
PER_AGENT = 20  # findings of each agent in each round
BATCH, STEP = 10, 5  # batch size and stride: consecutive batches share 5 findings
SHARED = 2  # findings of the next agent in each batch
CAUSES = ["none", "firewall", "service", "tls"]
DEADLINE = 120  # seconds for a round


def _findings(agent: str, start: dt.datetime, rng: random.Random) -> list[dict]:
    """PER_AGENT findings over the agent's KEYS, each created at its own second, oldest first."""
    out = []
    for i in range(PER_AGENT):
        t, port = KEYS[rng.randrange(len(KEYS))]
        cause = rng.choice(CAUSES)
        verdict = "open" if cause in ("none", "tls") else "filtered"
        created = start + dt.timedelta(seconds=i, microseconds=rng.randrange(1000))
        out.append(finding(f"{agent}-{t}.test", port, cause, created_at=created, verdict=verdict))
    return out


def _batches(own: list[dict], neighbour: list[dict], rng: random.Random) -> list[list[dict]]:
    out = []
    for first in range(0, len(own) - STEP, STEP):
        part = own[first : first + BATCH] + rng.sample(neighbour, SHARED)
        out.append(part)
    return out


async def _send(client: httpx.AsyncClient, token: str, part: list[dict], timeout) -> dict | None:
    """POST one batch; its answer, or None when the client gave up waiting."""
    body = {"schema": "mailpath.diagnose/v1", "findings": part}
    try:
        r = await client.post(
            "/v1/findings", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )
    except httpx.TimeoutException:
        return None
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == len({f["id"] for f in part})
    return r.json()


async def _round(url: str, tokens: list[str], batches: list[list[list[dict]]], give_up: bool, seed: int):
    """Every batch of every agent sent twice at once; with ``give_up``, one of the two copies
    waits only 5 ms for its answer and is then sent again. Returns the answers received."""
    rng = random.Random(seed)
    # idle connections are dropped before the server's keep-alive timeout (5 s) could close
    # one just as a request is sent on it
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200, keepalive_expiry=1)
    impatient = httpx.Timeout(30, read=0.005)
    answers: list[dict] = []
    gave_up = 0

    async with httpx.AsyncClient(base_url=url, trust_env=False, limits=limits, timeout=60) as client:

        async def twice(token: str, part: list[dict]) -> None:
            nonlocal gave_up
            copies = [rng.sample(part, len(part)), rng.sample(part, len(part))]
            timeouts = [impatient if give_up else 60, 60]
            got = await asyncio.gather(
                *(_send(client, token, c, t) for c, t in zip(copies, timeouts, strict=True))
            )
            if got[0] is None:  # gave up: send it again, patiently
                gave_up += 1
                got[0] = await _send(client, token, copies[0], 60)
            answers.extend(got)

        jobs = [twice(tokens[a], part) for a in range(len(tokens)) for part in batches[a]]
        rng.shuffle(jobs)
        await asyncio.wait_for(asyncio.gather(*jobs), DEADLINE)
    return answers, gave_up


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _ingested(url: str) -> float:
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as c:
        text = c.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mailpath_collector_findings_ingested_total":
                return sample.value
    return 0.0


@pytest.mark.timeout(600)
def test_fifty_agents_posting_overlapping_batches_store_each_finding_once(collector, name):
    rng = random.Random(11)
    names = [f"{name}-{i:02d}" for i in range(AGENTS)]
    tokens = collector.agent_tokens(names)
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=1)
    sent: dict[str, dict] = {}
    rounds = []
    for number in range(2):
        own = [_findings(n, start + dt.timedelta(hours=number), rng) for n in names]
        batches = [_batches(own[a], own[(a + 1) % AGENTS], rng) for a in range(AGENTS)]
        for part in (f for b in batches for p in b for f in p):
            sent[part["id"]] = part
        distinct = {f["id"] for b in batches for p in b for f in p}
        before = _ingested(collector.url)
        answers, gave_up = asyncio.run(
            _round(collector.url, tokens, batches, give_up=number == 1, seed=number)
        )
        rounds.append((len(distinct), sum(a["new"] for a in answers), gave_up))
        assert _ingested(collector.url) - before == len(distinct)  # the collector's own count
        if number == 0:
            assert sum(a["new"] for a in answers) == len(distinct)
        else:
            assert gave_up > 0, "no request timed out: round 2 tested no retry after a timeout"
            assert sum(a["new"] for a in answers) <= len(distinct)

    # through the API: every finding listed once, under one of the agents that sent it
    stored: dict[str, str] = {}
    with collector.client(tokens[0]) as c:
        listed = Counter()
        for agent in names:
            for item in pages(c, "/v1/findings", agent=agent, limit=1000):
                listed[item["id"]] += 1
                stored[item["id"]] = item["agent"]
                assert item["finding"] == sent[item["id"]]
        states = [s for agent in names for s in pages(c, "/v1/targets", agent=agent, limit=1000)]
    assert set(listed) == set(sent) and set(listed.values()) == {1}

    # directly in the database
    from mailpath.collector.db import FindingRow, LatestRow, make_engine
    from mailpath.collector.settings import normalize_database_url

    engine = make_engine(normalize_database_url(collector.database))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(FindingRow.id, FindingRow.agent).where(FindingRow.agent.in_(names))
            ).all()
            latest = conn.execute(
                select(LatestRow.agent, LatestRow.target, LatestRow.port, LatestRow.finding_id).where(
                    LatestRow.agent.in_(names)
                )
            ).all()
    finally:
        engine.dispose()
    assert len(rows) == len(sent) and {str(i) for i, _ in rows} == set(sent)
    assert {str(i): a for i, a in rows} == stored

    # each agent x target x port: the newest finding stored under that agent
    newest: dict[tuple, dict] = {}
    for fid, agent in stored.items():
        f = sent[fid]
        key = (agent, f["target"], f["port"])
        if key not in newest or _at(f["created_at"]) > _at(newest[key]["created_at"]):
            newest[key] = f
    expected = {key: f["id"] for key, f in newest.items()}
    assert {(a, t, p): str(fid) for a, t, p, fid in latest} == expected
    assert {(s["agent"], s["target"], s["port"]): s["finding_id"] for s in states} == expected
    for s in states:
        assert _at(s["since"]) <= _at(s["last_finding_at"])
    print(f"\n{collector.database.split(':')[0]}: rounds (distinct, new, gave up) {rounds}")


def test_the_same_batch_from_many_connections_at_once_is_new_once(collector, name):
    """One agent, one batch of 100, sent 20 times at the same moment: new adds up to 100."""
    (token,) = collector.agent_tokens([name])
    part = [finding(f"{name}-{i % 7}.test", 25 + i) for i in range(100)]
    answers, _ = asyncio.run(_round(collector.url, [token], [[part] * 10], give_up=False, seed=3))
    assert len(answers) == 20 and sum(a["new"] for a in answers) == 100
    assert all(a["accepted"] == 100 for a in answers)
    with collector.client(token) as c:
        assert len(pages(c, "/v1/findings", agent=name, limit=1000)) == 100
        states = defaultdict(list)
        for s in pages(c, "/v1/targets", agent=name, limit=1000):
            states[s["target"]].append(s)
    assert sum(len(v) for v in states.values()) == 100  # every port its own state
    assert {s["finding_id"] for v in states.values() for s in v} == {f["id"] for f in part}


def test_agents_sending_the_same_findings_in_other_orders_all_succeed(collector, name):
    """10 agents send the same overlapping windows of findings, each shuffled its own way, all
    at once: on PostgreSQL two transactions that insert shared ids in opposite orders used to
    deadlock (a 503 after PostgreSQL's deadlock timeout); inserted in id order, they queue."""
    names = [f"{name}-{i}" for i in range(10)]
    tokens = collector.agent_tokens(names)
    shared = [finding(f"{name}-{i % 5}.test", 25 + i) for i in range(120)]
    windows = [shared[k * 10 : k * 10 + 40] for k in range(9)]
    rng = random.Random(5)
    batches = [[rng.sample(w, len(w)) for w in windows] for _ in names]
    answers, _ = asyncio.run(_round(collector.url, tokens, batches, give_up=False, seed=4))
    assert len(answers) == 2 * 9 * 10
    assert sum(a["new"] for a in answers) == len(shared)
    with collector.client(tokens[0]) as c:
        owners = Counter(c.get(f"/v1/findings/{f['id']}").json()["agent"] for f in shared)
    assert set(owners) <= set(names) and sum(owners.values()) == len(shared)
