"""Benchmark: the collector's ingest, over HTTP, on SQLite and on PostgreSQL, beside what the
same database takes without HTTP.

For each database, ``mailpath collector serve`` runs in a subprocess on 127.0.0.1 (as the
service tests start it: :class:`tests.services.conftest.Collector`; PostgreSQL is a server of
its own, :class:`tests.pgcluster.PostgresCluster`, with PostgreSQL's default durability), and
``--clients`` agents (one token each) post batches of ``--batch`` new findings:

- as fast as they can (each posts its next batch when the last is answered), ``--seconds``
  after a warm-up: the most the collector takes, and the latency with that many waiting;
- offering 5,000 findings/s (the aim), then half the most it took, whether or not answers
  keep up (latency counted from when a batch was due): the latency under a given load.

Printed: findings answered per second, the p50 and p99 of the request latency. Beside them,
measured in the same run on a new database of the same kind, one thread without HTTP:

- ``parse``: :func:`ingest.parse` alone (JSON and pydantic validation of every finding);
- ``parse+store``: :func:`ingest.parse` then :func:`ingest.store` in one write transaction
  per batch (what the route does);
- ``INSERT``: the raw insert rate, the ceiling: the same rows inserted into the same
  ``findings`` table with SQLAlchemy Core's executemany, one transaction per batch, one
  connection, nothing else (no latest state, no agent row, no validation).

The findings are realistic (a firewall drop with its trace, evidence and remediation, about
1.4 KB of JSON each), all new (distinct ids), spread over 8 targets x 2 ports per agent.
Clients and server share the machine. Aim (issue 11): 5,000 findings/s or more on SQLite with
a p99 of 100 ms or less. About 80 seconds.

Usage: ``python -m bench.collector_ingest [--seconds 5] [--clients 50] [--batch 100]
[--databases sqlite,postgresql]`` (``make bench``; sends nothing beyond 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from tests.pgcluster import PostgresCluster
from tests.services.conftest import Collector

AIM_RATE, AIM_P99_MS = 5000, 100


def finding(agent: str, i: int, now: dt.datetime) -> dict:
    """A finding as ``mailpath diagnose`` sends one for a port filtered at the second hop."""
    target, port = f"mx{i % 8}.{agent}.example.test", (25, 587)[i // 8 % 2]
    return {
        "id": str(uuid.uuid4()),
        "schema": "mailpath.finding/v1",
        "created_at": (now - dt.timedelta(seconds=i)).isoformat(),
        "agent": {"hostname": agent, "version": "0.1.0", "cloud": None},
        "target": target,
        "domain": "example.test",
        "port": port,
        "addresses": [
            {
                "address": "198.18.3.2",
                "verdict": "filtered",
                "method": "raw",
                "limitations": [],
                "responder": None,
                "responder_hop": None,
                "destination_hop": 4,
                "trace": {
                    "verdict": "dropped",
                    "drop_after_hop": 2,
                    "reached_destination": False,
                    "responder_hop": None,
                    "destination_hop": None,
                    "port_specific": True,
                    "hops": [
                        {"ttl": 1, "address": "198.18.1.1", "reply": "time-exceeded"},
                        {"ttl": 2, "address": "198.18.2.1", "reply": "time-exceeded"},
                        {"ttl": 3, "address": None, "reply": None},
                    ],
                },
                "smtp": None,
            }
        ],
        "cause": "firewall",
        "location": {"kind": "hop", "hop": 2, "address": "198.18.2.1", "component": None},
        "headline": f"{port} on {target}: dropped after hop 2 (198.18.2.1)",
        "evidence": [
            {"source": "probe", "ref": f"probe:198.18.3.2:{port}", "fact": "no answer to 3 SYNs"},
            {"source": "trace", "ref": f"trace:198.18.3.2:{port}/ttl=3", "fact": "silent after hop 2"},
            {"source": "probe", "ref": "probe:198.18.3.2:443", "fact": "443 answers SYN-ACK"},
        ],
        "remediation": [
            f"Allow TCP {port} outbound at the firewall after 198.18.2.1.",
            "Ask the network team whether port 25 is blocked upstream on purpose.",
        ],
        "severity": "error",
        "candidates": [],
    }


def batch_body(agent: str, size: int, now: dt.datetime) -> bytes:
    doc = {"schema": "mailpath.diagnose/v1", "findings": [finding(agent, i, now) for i in range(size)]}
    return json.dumps(doc).encode()


class Bodies:
    """Batches of one agent, each with new finding ids: the JSON is made once, and each body
    only splices in new ids (a few microseconds a finding, so the clients, which share the
    machine with the server, take little of it)."""

    def __init__(self, agent: str, size: int, now: dt.datetime) -> None:
        doc = json.loads(batch_body(agent, size, now))
        ids = [f["id"] for f in doc["findings"]]
        text = json.dumps(doc).encode()
        self.parts = []
        for ident in ids:
            head, text = text.split(ident.encode(), 1)
            self.parts.append(head)
        self.parts.append(text)

    def next(self) -> bytes:
        raw = os.urandom(16 * (len(self.parts) - 1))
        out = [self.parts[0]]
        for i, part in enumerate(self.parts[1:]):
            out += (str(uuid.UUID(bytes=raw[16 * i : 16 * i + 16], version=4)).encode(), part)
        return b"".join(out)


# -- over HTTP ---------------------------------------------------------------------------


def _summary(stored: int, seconds: float, latencies: list[float]) -> dict:
    latencies = sorted(latencies)
    return {
        "requests": len(latencies),
        "rate": stored / seconds,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


def _client(url: str, clients: int) -> httpx.AsyncClient:
    # idle connections dropped before the server's keep-alive timeout could close one in use
    limits = httpx.Limits(max_connections=4 * clients, keepalive_expiry=1)
    return httpx.AsyncClient(base_url=url, trust_env=False, limits=limits, timeout=120)


async def _post(client: httpx.AsyncClient, token: str, body: bytes, size: int) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    r = await client.post("/v1/findings", content=body, headers=headers)
    if r.status_code != 200 or r.json()["new"] != size:
        raise SystemExit(f"unexpected answer {r.status_code}: {r.text[:300]}")


async def closed_loop(url: str, tokens: list[str], size: int, seconds: float, warmup: float) -> dict:
    """Each client posts its next batch as soon as the last is answered: the most the
    collector takes. The rate counts the findings answered in the measured window; the
    latencies, the requests sent in it."""
    now = dt.datetime.now(dt.UTC)
    latencies: list[float] = []
    stored = 0
    async with _client(url, len(tokens)) as client:
        start = time.perf_counter()
        measure_from, stop = start + warmup, start + warmup + seconds

        async def agent(token: str, name: str) -> None:
            nonlocal stored
            bodies = Bodies(name, size, now)
            while True:
                body = bodies.next()  # made before the clock starts
                t0 = time.perf_counter()
                if t0 >= stop:
                    return
                await _post(client, token, body, size)
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    latencies.append(t1 - t0)
                if measure_from <= t1 <= stop:
                    stored += size

        await asyncio.gather(*(agent(t, f"bench-{i:02d}") for i, t in enumerate(tokens)))
    return _summary(stored, seconds, latencies)


async def open_loop(url: str, tokens: list[str], size: int, rate: float, requests: int, most: float):
    """The clients together offer ``rate`` findings/s: each sends a batch every
    ``clients * size / rate`` seconds (phases spread), whether or not its last one was
    answered, ``requests`` in all (fewer if that would take more than ``most`` seconds). A
    latency counts from when the batch was due (so a backlog shows in it); the rate is what
    was answered over the time from the first send to the last answer."""
    now = dt.datetime.now(dt.UTC)
    period = len(tokens) * size / rate
    seconds = min(most, requests * size / rate)
    plan = []  # (offset, token, body), every body made before the clock starts
    for i, token in enumerate(tokens):
        bodies = Bodies(f"open-{i:02d}", size, now)
        offset = period * i / len(tokens)
        while offset < seconds:
            plan.append((offset, token, bodies.next()))
            offset += period
    latencies: list[float] = []
    async with _client(url, len(tokens)) as client:
        start = time.perf_counter()

        async def one(offset: float, token: str, body: bytes) -> None:
            due = start + offset
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await _post(client, token, body, size)
            latencies.append(time.perf_counter() - due)

        await asyncio.gather(*(one(*p) for p in plan))
        elapsed = time.perf_counter() - start
    return _summary(len(latencies) * size, elapsed, latencies)


def over_http(database: str, folder: Path, args) -> list[tuple[str, dict]]:
    """(load, figures) for as fast as the clients can, at the aim, and at half the most."""
    server = Collector(folder, body_limit=str(64 << 20))
    server.database = database
    try:
        server.start()
        tokens = server.agent_tokens([f"bench-{i:02d}" for i in range(args.clients)])
        most = asyncio.run(closed_loop(server.url, tokens, args.batch, args.seconds, warmup=1.5))
        out = [(f"as fast as it can ({most['requests']})", most)]
        for rate in (AIM_RATE, round(most["rate"] / 2, -1)):
            figures = asyncio.run(open_loop(server.url, tokens, args.batch, rate, 100, args.open_seconds))
            out.append((f"{rate:,.0f}/s offered ({figures['requests']})", figures))
    finally:
        server.stop()
    return out


# -- without HTTP ------------------------------------------------------------------------


def _engine(database: str):
    from mailpath.collector import migrate
    from mailpath.collector.db import make_engine
    from mailpath.collector.settings import normalize_database_url

    engine = make_engine(normalize_database_url(database))
    migrate.upgrade(engine)
    return engine


def _timed(seconds: float, prepare, work) -> float:
    """Findings per second of ``work(prepare())`` (returns findings done), run until it has
    taken ``seconds``; only ``work`` is timed."""
    done, spent = 0, 0.0
    while spent < seconds:
        ready = prepare()
        start = time.perf_counter()
        done += work(ready)
        spent += time.perf_counter() - start
    return done / spent


def parse_rate(size: int, seconds: float) -> float:
    from mailpath.collector import ingest

    body = batch_body("bench", size, dt.datetime.now(dt.UTC))
    return _timed(seconds, lambda: body, lambda b: len(ingest.parse(b)))


def store_rate(database: str, size: int, seconds: float) -> float:
    from mailpath.collector import ingest
    from mailpath.collector.db import write_session

    engine = _engine(database)
    now = dt.datetime.now(dt.UTC)
    agents = [(f"store-{i:02d}", Bodies(f"store-{i:02d}", size, now)) for i in range(50)]
    turn = iter(range(10**9))

    def prepare():
        agent, bodies = agents[next(turn) % len(agents)]
        return agent, bodies.next()

    def work(ready) -> int:
        agent, body = ready
        findings = ingest.parse(body)
        with write_session(engine) as session:
            return ingest.store(session, agent, findings)

    try:
        return _timed(seconds, prepare, work)
    finally:
        engine.dispose()


def raw_insert_rate(database: str, size: int, seconds: float) -> float:
    """The rows the collector stores for these findings, as it makes them (the document as
    pydantic serializes it), inserted and nothing else."""
    from mailpath.collector import ingest
    from mailpath.collector.db import FindingRow

    engine = _engine(database)
    now = dt.datetime.now(dt.UTC)
    table = FindingRow.__table__
    bodies = Bodies("raw", size, now)

    def prepare() -> list[dict]:
        return [ingest.finding_row(f, "raw", now) for f in ingest.parse(bodies.next())]

    def work(rows: list[dict]) -> int:
        with engine.begin() as conn:
            conn.execute(table.insert(), rows)
        return len(rows)

    try:
        return _timed(seconds, prepare, work)
    finally:
        engine.dispose()


# -- the run -----------------------------------------------------------------------------


def measure(kind: str, args, folder: Path, cluster: PostgresCluster | None) -> dict:
    def database(label: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{folder / kind / label}.db"
        assert cluster is not None
        return cluster.create_database(label)

    (folder / kind).mkdir()
    return {
        "http": over_http(database("http"), folder / kind, args),
        "parse": parse_rate(args.batch, args.side_seconds),
        "store": store_rate(database("store"), args.batch, args.side_seconds),
        "insert": raw_insert_rate(database("raw"), args.batch, args.side_seconds),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5, help="measured load, as fast as it can")
    parser.add_argument("--open-seconds", type=float, default=10, help="each offered load, at most")
    parser.add_argument("--side-seconds", type=float, default=1.5, help="each measure without HTTP")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--batch", type=int, default=100, help="findings per request")
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="mailpath-bench-") as tmp:
        for kind in args.databases.split(","):
            if kind == "postgresql":
                with PostgresCluster(fast=False) as cluster:
                    results[kind] = measure(kind, args, Path(tmp), cluster)
            else:
                results[kind] = measure(kind, args, Path(tmp), None)

    print(f"collector ingest: {args.clients} clients, batches of {args.batch} findings, over HTTP")
    print(f"{'database':12}{'load (requests)':24}{'finding/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
    for kind, r in results.items():
        for load, f in r["http"]:
            print(f"{kind:12}{load:24}{f['rate']:>12,.0f}{f['p50_ms']:>10.1f}{f['p99_ms']:>10.1f}")
    print("the same findings without HTTP, one thread (finding/s): parse, parse + store,")
    print("and the ceiling: the same rows INSERTed (SQLAlchemy Core executemany), nothing else")
    print(f"{'database':12}{'parse':>12}{'parse+store':>14}{'INSERT':>12}")
    for kind, r in results.items():
        print(f"{kind:12}{r['parse']:>12,.0f}{r['store']:>14,.0f}{r['insert']:>12,.0f}")
    if "sqlite" in results:
        most = results["sqlite"]["http"][0][1]
        at_aim = results["sqlite"]["http"][1][1]
        met = most["rate"] >= AIM_RATE and at_aim["p99_ms"] <= AIM_P99_MS
        print(
            f"aim on SQLite, {AIM_RATE:,} findings/s with p99 <= {AIM_P99_MS} ms: "
            f"{'reached' if met else 'not reached'}"
        )
    doc = {
        kind: {
            "http": [{"load": load, **{k: round(v, 1) for k, v in f.items()}} for load, f in r["http"]],
            **{k: round(r[k]) for k in ("parse", "store", "insert")},
        }
        for kind, r in results.items()
    }
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
