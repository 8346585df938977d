"""Benchmark: 10,000 SYN probes in the lab, mailpath against ``nmap -sS`` in the same run.

5,000 ports are dropped by r2 (expected: filtered) and 5,000 are closed on the server
(expected: refused / nmap "closed"). Both tools probe the same address and ports with one
retry. Prints wall time, the ratio, right verdicts and peak RSS of each.

Usage: ``python -m bench.probe_vs_nmap [--ports N]`` (as root; ``make bench``).
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from lab import Lab

MAILPATH = str(Path(sys.executable).with_name("mailpath"))


def _measured(lab: Lab, argv: list[str]) -> tuple[str, dict]:
    r = lab.exec("client", [sys.executable, "-m", "bench.measure", "--", *argv], timeout=3600)
    stats = json.loads(r.stderr.strip().splitlines()[-1])
    return r.stdout, stats


def _ranges(lo: int, n: int) -> str:
    return f"{lo}-{lo + n - 1}"


def nmap_verdicts(xml: str) -> dict[int, str]:
    """Per-port state from nmap's XML, including ports folded into <extraports>."""
    root = ET.fromstring(xml)
    states: dict[int, str] = {}
    for port in root.iter("port"):
        states[int(port.get("portid"))] = port.find("state").get("state")
    for extra in root.iter("extraports"):
        for reasons in extra.iter("extrareasons"):
            for part in (reasons.get("ports") or "").split(","):
                if not part:
                    continue
                lo, _, hi = part.partition("-")
                for p in range(int(lo), int(hi or lo) + 1):
                    states[p] = extra.get("state")
    return states


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ports", type=int, default=5000, help="ports per group (default 5000)")
    n = ap.parse_args().ports
    dropped, closed = _ranges(20000, n), _ranges(30000, n)
    expect = {p: "filtered" for p in range(20000, 20000 + n)} | {
        p: "refused" for p in range(30000, 30000 + n)
    }
    with Lab() as lab:
        lab.block("r2", dropped.replace("-", ":"), "drop", family=4)
        target = lab.server4
        mp_out, mp = _measured(
            lab, [MAILPATH, "probe", target, "-p", f"{dropped},{closed}", "--retries", "1", "--json"]
        )
        nm_out, nm = _measured(
            lab,
            [
                "nmap",
                "-sS",
                "-Pn",
                "-n",
                "--max-retries",
                "1",
                "--reason",
                "-p",
                f"{dropped},{closed}",
                target,
                "-oX",
                "-",
            ],
        )
    mp_verdicts = {r["port"]: r["verdict"] for r in json.loads(mp_out)["results"]}
    nm_states = nmap_verdicts(nm_out)
    nmap_name = {"filtered": "filtered", "refused": "closed"}
    mp_right = sum(mp_verdicts.get(p) == v for p, v in expect.items())
    nm_right = sum(nm_states.get(p) == nmap_name[v] for p, v in expect.items())
    total = len(expect)
    print(f"{total} probes to {target}: {n} dropped by r2, {n} closed on the server, 1 retry\n")
    print(f"{'tool':10} {'wall s':>8} {'right':>12} {'peak RSS MB':>12}")
    print(f"{'mailpath':10} {mp['wall_s']:8.2f} {mp_right:>6}/{total:<5} {mp['max_rss_kb'] / 1024:12.1f}")
    print(f"{'nmap -sS':10} {nm['wall_s']:8.2f} {nm_right:>6}/{total:<5} {nm['max_rss_kb'] / 1024:12.1f}")
    print(f"\nmailpath time / nmap time = {mp['wall_s'] / nm['wall_s']:.3f}")
    return 0 if mp_right == total else 1


if __name__ == "__main__":
    sys.exit(main())
