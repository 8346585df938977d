"""Benchmark: one round of the agent over 500 targets × 3 ports, in the lab (duration, peak RSS).

The server gets 500 addresses of its own (245 IPv4 in 198.18.3.0/24, the rest IPv6 in
2001:db8:3::/64), and every one is a target of the agent, given as an address (no DNS), on
ports 25, 465 and 587. On every address an SMTP server (``lab.smtpd``, aiosmtpd) answers 25 and
587 (587 without STARTTLS: a TLS finding); 465 is closed (refused); and r2 drops 465 for a tenth
of the addresses (``--drop``), which costs those the probe's timeouts and a trace. The agent
runs ``mailpath agent once`` in the client namespace (raw probes), its findings to the stdout
sink (into /dev/null: the round, not the delivery, is measured), under ``bench.measure``.

Prints the round's duration as the agent logged it, the wall time and peak RSS of the whole
command, the findings by cause, and one JSON line. Usage: ``python -m bench.agent_round
[--targets 500] [--concurrency 8] [--drop 0.1]`` (as root; ``make bench``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

from lab import Lab

MAILPATH = str(Path(sys.executable).with_name("mailpath"))
ROUND = re.compile(r"round 1: (\d+)/(\d+) targets, (\d+)/(\d+) problems, (\d+) sent.*, ([\d.]+) s$", re.M)


def addresses(n: int) -> list[str]:
    v4 = [f"198.18.3.{i}" for i in range(10, 255)][:n]
    return v4 + [f"2001:db8:3::1:{i:x}" for i in range(n - len(v4))]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--drop", type=float, default=0.1, help="fraction of the addresses whose 465 r2 drops")
    args = p.parse_args(argv)
    targets = addresses(args.targets)
    dropped = targets[:: max(1, round(1 / args.drop))] if args.drop > 0 else []
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lab.add_address("server", *targets)
        spec = [
            {"address": host, "port": port, "behaviour": "smtp", "tls": "none"}
            for host in ("0.0.0.0", "::")
            for port in (25, 587)
        ]
        lab.serve_smtp(spec, work)
        for a in dropped:
            tool = "ip6tables" if ":" in a else "iptables"
            lab.sh("r2", f"{tool} -A FORWARD -p tcp --syn -d {a} --dport 465 -j DROP")
        config = work / "agent.toml"
        config.write_text(
            "\n".join(
                [
                    f'spool_dir = "{work / "spool"}"',
                    f"concurrency = {args.concurrency}",
                    "[probe]",
                    'method = "raw"',
                    "[cloud]",
                    'check = "off"',
                    *[f'[[targets]]\ntarget = "{a}"\nports = [25, 465, 587]' for a in targets],
                    "[delivery]",
                    f"spool_max_count = {10 * len(targets) * 3}",
                    "[stdout]",
                    "enabled = true",
                ]
            )
            + "\n"
        )
        r = lab.exec(
            "client",
            [sys.executable, "-m", "bench.measure", "--", MAILPATH, "agent", "once", "--config", str(config)],
            check=False,
            timeout=3600,
        )
    found = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    measured = json.loads(r.stderr.strip().splitlines()[-1])
    m = ROUND.search(r.stderr)
    if m is None or measured["code"] != 0:
        print(r.stderr[-3000:], file=sys.stderr)
        return 1
    diagnosed, total, _, findings, _, seconds = m.groups()
    causes = Counter(f["cause"] for f in found)
    print(
        f"{total} targets × 3 ports ({len(dropped)} with 465 dropped at r2), concurrency {args.concurrency}"
    )
    print(f"round              {float(seconds):8.1f} s   ({diagnosed}/{total} targets, {findings} findings)")
    print(f"agent once (wall)  {measured['wall_s']:8.1f} s   (the round, the spool, the stdout sink)")
    print(f"peak RSS           {measured['max_rss_kb'] / 1024:8.1f} MiB")
    print("findings by cause  " + ", ".join(f"{c} {n}" for c, n in sorted(causes.items())))
    doc = {
        "targets": int(total),
        "ports": 3,
        "concurrency": args.concurrency,
        "dropped_465": len(dropped),
        "round_s": float(seconds),
        "wall_s": measured["wall_s"],
        "max_rss_kb": measured["max_rss_kb"],
        "findings": int(findings),
        "causes": dict(causes),
    }
    print(json.dumps(doc))
    return 0 if int(diagnosed) == int(total) and len(found) == int(findings) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
