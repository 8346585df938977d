"""A process the fault tests can kill: it delivers a spool file to a collector, or fills one.

Usage (from the repository's root)::

    python -m tests.services.delivery_worker run SPOOL URL TOKEN_FILE [--batch-size N]
    python -m tests.services.delivery_worker once SPOOL URL TOKEN_FILE [--batch-size N]
    python -m tests.services.delivery_worker produce SPOOL COUNT

``run`` delivers until SIGTERM (the daemon's way); ``once`` flushes and prints the report as
JSON; ``produce`` spools COUNT findings one by one and prints each id once add() returned (so
what it printed is what it was told is durable). Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from mailpath.agent.daemon.delivery import CollectorSettings, Delivery, DeliverySettings, make_sinks
from mailpath.agent.daemon.spool import Spool

from tests.services.conftest import finding


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["run", "once", "produce"])
    parser.add_argument("spool", type=Path)
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    spool = Spool(args.spool, max_count=100_000, max_age=86_400)
    if args.mode == "produce":
        for i in range(int(args.rest[0])):
            doc = finding(target=f"p{i}.example.test")
            spool.add([doc])
            print(doc["id"], flush=True)
        return 0
    url, token_file = args.rest
    settings = DeliverySettings(batch_size=args.batch_size, timeout=5, backoff_base=0.05, backoff_cap=0.5)
    delivery = Delivery(
        spool, make_sinks(CollectorSettings(url=url, token_file=token_file), None, None), settings
    )

    async def run() -> int:
        if args.mode == "once":
            report = await delivery.flush()
            print(json.dumps(report.to_dict()), flush=True)
            return 0 if report.complete else 4
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await delivery.run(stop)
        return 0

    try:
        return asyncio.run(run())
    finally:
        spool.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
