"""Benchmark: the agent's delivery throughput, spool → a local collector (findings per second),
beside the same batches POSTed straight to the collector without a spool, in the same run.

A collector (``mailpath collector serve``, SQLite in a temporary folder, 127.0.0.1 and a free
port) is started for the run and stopped after it. For each batch size: N findings are spooled
(``Spool.add`` in rounds of 100: one fsync each, as the daemon's rounds do), then
``Delivery.flush()`` sends them, reading batches from the spool and recording each
acknowledgement (fsync); the baseline sends the same number of findings, in batches of that
size, with ``post_findings_async`` only (no spool). Each step is bounded by ``--seconds``; the
rate is what was delivered in the time taken.

The spool is on the same disk as the collector's database unless ``--spool-dir`` says otherwise:
on one machine the agent's fsyncs and the collector's wait for the same disk.

Usage: ``python -m bench.agent_delivery [--findings 20000] [--batch 100,500] [--seconds 60]
[--spool-dir DIR]``
(``make bench``; needs no root and sends nothing off 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
from mailpath.agent.daemon.delivery import CollectorSettings, Delivery, DeliverySettings, make_sinks
from mailpath.agent.daemon.spool import Spool
from mailpath.agent.report import post_findings_async

from tests.services.conftest import Collector, finding


def make_findings(n: int, tag: str) -> list[dict]:
    return [finding(target=f"{tag}-{i % 500}.example.test", port=(25, 465, 587)[i % 3]) for i in range(n)]


def spool_them(spool: Spool, docs: list[dict]) -> float:
    start = time.perf_counter()
    for i in range(0, len(docs), 100):
        spool.add(docs[i : i + 100])
    return time.perf_counter() - start


async def through_the_spool(
    spool: Spool, url: str, token_file: Path, batch: int, seconds: float
) -> tuple[int, float]:
    settings = DeliverySettings(batch_size=batch, timeout=60)
    delivery = Delivery(
        spool, make_sinks(CollectorSettings(url=url, token_file=token_file), None, None), settings
    )
    start = time.perf_counter()
    report = await delivery.flush(deadline=time.monotonic() + seconds)
    took = time.perf_counter() - start
    await delivery.aclose()
    return report.delivered.get("collector", 0), took


async def straight(docs: list[dict], url: str, token: str, batch: int, seconds: float) -> tuple[int, float]:
    sent = 0
    start = time.perf_counter()
    async with httpx.AsyncClient(trust_env=False) as client:
        for i in range(0, len(docs), batch):
            part = docs[i : i + batch]
            answer = await post_findings_async(url, token, part, client=client, timeout=60)
            if not answer.ok:
                raise SystemExit(f"the collector answered {answer.status}: {answer.body}")
            sent += len(part)
            if time.perf_counter() - start > seconds:
                break
    return sent, time.perf_counter() - start


def fresh_collector(folder: Path, name: str) -> tuple[Collector, str, Path]:
    """A collector on a new database (so no step pays for the rows of another), and a token."""
    folder.mkdir()
    collector = Collector(folder).start()
    token = collector.token(name)
    token_file = folder / "token"
    token_file.write_text(token + "\n")
    return collector, token, token_file


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--findings", type=int, default=20_000, help="findings per run (default 20000)")
    ap.add_argument("--batch", default="100,500", help="batch sizes, comma-separated (default 100,500)")
    ap.add_argument("--seconds", type=float, default=60, help="time bound of each step (default 60)")
    ap.add_argument(
        "--spool-dir", type=Path, help="where the spool files go (default: beside the collector's)"
    )
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for k, batch in enumerate(int(b) for b in args.batch.split(",")):
            row: dict = {"batch": batch}
            # the two ways in turn, the first swapped at each batch size
            for way in ("spool", "straight") if k % 2 == 0 else ("straight", "spool"):
                collector, token, token_file = fresh_collector(folder / f"{way}{k}", f"{way}{k}")
                try:
                    docs = make_findings(args.findings, way)
                    if way == "spool":
                        where = (args.spool_dir or folder / f"{way}{k}") / f"spool{k}.db"
                        with Spool(where, max_count=10**7, max_age=86_400) as sp:
                            row["spooled_per_s"] = round(len(docs) / spool_them(sp, docs))
                            n, took = asyncio.run(
                                through_the_spool(sp, collector.url, token_file, batch, args.seconds)
                            )
                            row["left_in_spool"] = sp.counts().pending
                    else:
                        n, took = asyncio.run(straight(docs, collector.url, token, batch, args.seconds))
                finally:
                    collector.stop()
                row[f"{way}_delivered"] = n
                row[f"{way}_per_s"] = round(n / took)
            rows.append(row)
            ratio = row["spool_per_s"] / row["straight_per_s"]
            print(
                f"batch {batch:5d}: spooled {row['spooled_per_s']:6d}/s   through the spool "
                f"{row['spool_per_s']:5d}/s   straight {row['straight_per_s']:5d}/s   ratio {ratio:.2f}"
            )
    print(json.dumps({"findings": args.findings, "runs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
