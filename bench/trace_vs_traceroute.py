"""Benchmark: `mailpath trace` against Debian's `traceroute -T` on the same lab faults.

For each fault (an open port, drops at hop 1, hop 2 and the destination, a forged RST, an
ICMP reject) both tools trace the same address and port in the same run, with their
default settings. Prints each tool's wall time, the ratio, and the last hop each names
(the address of the last hop that answered) and whether they agree; the TTL each printed
it at is shown too (traceroute keeps listing a rejecting hop at the TTLs after it).

Usage: ``python -m bench.trace_vs_traceroute`` (as root; ``make bench``).
"""

from __future__ import annotations

import json
import re
import sys

from bench.probe_vs_nmap import MAILPATH, _measured
from lab import Lab

FAULTS = {
    25: ("open port", None, None),
    2525: ("drop at hop 1", "r1", "drop"),
    2526: ("drop at hop 2", "r2", "drop"),
    2527: ("drop by the destination", "server", "drop"),
    2528: ("forged RST at hop 2", "r2", "tcp-reset"),
    2529: ("ICMP reject at hop 1", "r1", "admin-prohibited"),
}
_IP = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


def traceroute_last_hop(out: str) -> tuple[int, str] | None:
    last = None
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0].isdigit():
            addresses = [f for f in fields[1:] if _IP.match(f)]
            if addresses:
                last = (int(fields[0]), addresses[0])
    return last


def mailpath_last_hop(t: dict) -> tuple[int, str] | None:
    answered = [row for row in t["hops"] if row["address"]]
    return (answered[-1]["ttl"], answered[-1]["address"]) if answered else None


def main() -> int:
    rows, agree = [], 0
    with Lab() as lab:
        lab.listen([25])
        for port, (_, node, action) in FAULTS.items():
            if node:
                lab.block(node, port, action, family=4)
        for port, (name, _, _) in FAULTS.items():
            out, mp = _measured(lab, [MAILPATH, "trace", lab.server4, "-p", str(port), "--json"])
            mine = mailpath_last_hop(json.loads(out)["traces"][0])
            out, tr = _measured(lab, ["traceroute", "-T", "-n", "-p", str(port), lab.server4])
            theirs = traceroute_last_hop(out)
            same = (mine and mine[1]) == (theirs and theirs[1])
            agree += same
            rows.append((name, port, mp["wall_s"], tr["wall_s"], mine, theirs, same))
    print(
        f"{'fault':26} {'port':>5} {'mailpath s':>10} {'traceroute s':>12}  last hop (mailpath | traceroute)"
    )
    for name, port, a, b, mine, theirs, same in rows:
        print(f"{name:26} {port:5} {a:10.2f} {b:12.2f}  {mine} | {theirs}{'' if same else '  DIFFER'}")
    total_mp, total_tr = sum(r[2] for r in rows), sum(r[3] for r in rows)
    print(
        f"\ntotal: mailpath {total_mp:.2f} s, traceroute -T {total_tr:.2f} s, "
        f"ratio {total_mp / total_tr:.3f}; same last hop in {agree}/{len(rows)}"
    )
    return 0 if agree == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
