"""Benchmark: `mailpath diagnose` against running the separate commands one by one.

In the mail lab, with faults on some ports (a drop at r2, a forged RST at r1), diagnose the
domain lab.test on 25, 465 and 587 in one command, then do the same walk by hand: `dns`,
then `probe` of every address, then `trace` of each address and port not open, then `smtp`
of each open one, each command waiting for the one before (as an operator would). Prints
both wall times and the ratio, and checks both saw the same verdicts.

Usage: ``python -m bench.diagnose_vs_separate`` (as root; ``make bench``).
"""

from __future__ import annotations

import json
import sys
import time

from bench.probe_vs_nmap import MAILPATH
from lab import Lab
from lab.mail import setup_mail

PORTS = "25,465,587"
COMMON = ("--timeout", "0.5", "--retries", "1")


def _run(lab: Lab, *args: str) -> dict:
    r = lab.exec("client", [MAILPATH, *args, "--json"], check=False, timeout=600)
    return json.loads(r.stdout)


def main() -> int:
    with Lab() as lab:
        mail = setup_mail(lab)
        lab.block("r2", 465, "drop")
        lab.block("r1", 25, "tcp-reset", family=4)
        ca = ("--ca-file", str(mail.ca_file))

        start = time.monotonic()
        found = _run(lab, "diagnose", "lab.test", "-p", PORTS, *COMMON, *ca, "--smtp-timeout", "2")[
            "findings"
        ]
        one = time.monotonic() - start
        together = {(a["address"], f["port"]): a["verdict"] for f in found for a in f["addresses"]}

        start = time.monotonic()
        (route,) = _run(lab, "dns", "lab.test")["routes"]
        targets = [(x["host"], a) for x in route["mx"] for a in x["addresses"]]
        probed = _run(lab, "probe", *[f"[{a}]" if ":" in a else a for _, a in targets], "-p", PORTS, *COMMON)
        separate = {}
        for r in probed["results"]:
            separate[(r["address"], r["port"])] = r["verdict"]
            host = next(h for h, a in targets if a == r["address"])
            if r["verdict"] == "open":
                family = "-6" if ":" in r["address"] else "-4"
                _run(lab, "smtp", host, "-p", str(r["port"]), family, *ca, "--timeout", "2")
            else:
                addr = f"[{r['address']}]" if ":" in r["address"] else r["address"]
                _run(lab, "trace", f"{addr}:{r['port']}", "--timeout", "0.5")
        by_hand = time.monotonic() - start
    same = together == separate
    print(f"{len(separate)} address×port pairs of lab.test ({PORTS}); drop at r2 on 465, forged RST on 25")
    print(f"diagnose (one command)        {one:7.2f} s")
    print(f"dns + probe + trace + smtp    {by_hand:7.2f} s  (one by one)")
    print(f"ratio diagnose / separate     {one / by_hand:7.3f}")
    print(f"same verdicts: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
